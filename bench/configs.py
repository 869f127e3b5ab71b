"""Benchmark sizes per device and mode (``full`` or ``quick``).

The full CUDA sizes are the ones of the issue (bert-base / GPT-2 124M, rows up to 8192, V up to
50257) and are sized so that ``bench/gpu.sh`` finishes in under 8 minutes on an H100. The CPU
sizes are small enough that the reference path prints its table in a few minutes on 2 cores;
``quick`` is a smoke test that runs in seconds (vocabulary 4096: it checks the harness, it does
not measure anything worth reporting).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["KernelConfig", "E2EConfig", "BenchConfig", "config_for"]


@dataclass(frozen=True)
class KernelConfig:
    """Kernel benchmark grid: every op over rows x vocab x dtype (sampling) on each backend."""

    rows: tuple[int, ...]
    vocabs: tuple[int, ...]
    dtypes: tuple[str, ...]
    # sampling variants: name -> (top_k, top_p)
    variants: tuple[tuple[str, int | None, float | None], ...] = (
        ("plain", None, None),
        ("top_k=30", 30, None),
        ("top_p=0.9", None, 0.9),
    )
    warmup: int = 2
    repeats: int = 10
    copy_bytes: int = 1 << 30


@dataclass(frozen=True)
class E2EConfig:
    """End-to-end grid: DiffusionBERT (BertForMaskedLM) against GPT-2 of the same size."""

    layers: int
    hidden: int
    bert_vocab: int = 30522
    gpt_vocab: int = 50257
    tokens: tuple[int, ...] = (64, 128)
    steps: tuple[int, ...] = (8, 16, 32, 64)
    batches: tuple[int, ...] = (1, 16, 64)
    top_k: int | None = 30
    dtype: str = "bfloat16"
    warmup: int = 1
    repeats: int = 3
    gpt_variants: tuple[str, ...] = ("kv-cache", "static-compile")


@dataclass(frozen=True)
class BenchConfig:
    """Everything one run measures."""

    device: str
    mode: str
    kernels: KernelConfig
    e2e: E2EConfig
    quality_steps: tuple[int, ...] = (16, 64, 128)
    quality_samples: int = 1000
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_FULL = {
    "cuda": BenchConfig(
        device="cuda",
        mode="full",
        kernels=KernelConfig(rows=(64, 1024, 8192), vocabs=(30522, 50257), dtypes=("float32", "bfloat16")),
        e2e=E2EConfig(layers=12, hidden=768),
    ),
    "cpu": BenchConfig(
        device="cpu",
        mode="full",
        kernels=KernelConfig(
            rows=(64, 256), vocabs=(30522, 50257), dtypes=("float32", "bfloat16"),
            warmup=1, repeats=3, copy_bytes=256 << 20,
        ),
        e2e=E2EConfig(
            layers=4, hidden=256, tokens=(64,), batches=(1, 8), dtype="float32", repeats=3,
            gpt_variants=("kv-cache", "static"),
        ),
        quality_samples=64,
    ),
}

_QUICK_KERNELS = KernelConfig(
    rows=(16,), vocabs=(4096,), dtypes=("float32",),
    variants=(("plain", None, None), ("top_k=30", 30, None)), warmup=1, repeats=2, copy_bytes=16 << 20,
)
_QUICK_E2E = E2EConfig(
    layers=2, hidden=64, bert_vocab=4096, gpt_vocab=4096, tokens=(16,), steps=(2, 4), batches=(1,), dtype="float32",
    warmup=1, repeats=2, gpt_variants=("kv-cache", "static"),
)


def config_for(device: str, quick: bool = False) -> BenchConfig:
    """The sizes for ``device`` (``"cpu"`` or ``"cuda"``); ``quick``: a seconds-long smoke run."""
    if device not in _FULL:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    full = _FULL[device]
    if not quick:
        return full
    e2e = _QUICK_E2E if device == "cpu" else replace(_QUICK_E2E, dtype="bfloat16")
    return replace(full, mode="quick", kernels=_QUICK_KERNELS, e2e=e2e, quality_steps=(2, 4), quality_samples=8)
