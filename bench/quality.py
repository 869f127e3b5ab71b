"""Steps versus time versus quality (the paper's Table 3) with a trained model.

The trained model, its tokenizer conventions and its metrics live in ``dbert_model`` (model/).
This module needs one entry point from it, imported lazily:

``dbert_model.load_for_bench(checkpoint: str, device: torch.device) -> BenchModel``

where a ``BenchModel`` (see :class:`BenchModel`) carries the denoiser, the ids it generates with,
and an ``evaluate(samples) -> {metric: value}`` (e.g. BLEU-4, Self-BLEU, ELBO perplexity).
Without that entry point or without a checkpoint the section is skipped with a message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

import dbert_kernels as dk

from .timing import synchronize

__all__ = ["BenchModel", "find_loader", "run_quality"]


class BenchModel(Protocol):
    """What ``dbert_model.load_for_bench`` returns."""

    #: a :class:`dbert_kernels.Denoiser` (or anything :func:`dbert_kernels.as_denoiser` accepts)
    denoiser: Any
    #: the ``[MASK]`` id
    mask_id: int
    #: sequence length to generate (with the special tokens that ``generate_kwargs`` fix)
    seq_len: int
    #: extra keyword arguments of :func:`dbert_kernels.generate` (schedule, top_k, fixed, ...)
    generate_kwargs: dict[str, Any]

    def evaluate(self, samples: torch.Tensor) -> dict[str, float]:
        """Quality numbers of ``samples`` ``[N, seq_len]`` int64 ids (higher/lower as named)."""
        ...


Loader = Callable[[str, torch.device], BenchModel]


def find_loader() -> Loader | str:
    """``dbert_model.load_for_bench``, or the reason why it cannot be used (a message)."""
    try:
        import dbert_model
    except ImportError as exc:
        return f"dbert_model is not importable ({exc}); install the package with its model/ directory"
    loader = getattr(dbert_model, "load_for_bench", None)
    if loader is None:
        return ("dbert_model has no load_for_bench(checkpoint, device) entry point yet "
                "(see bench/quality.py for the interface)")
    return loader


def run_quality(
    loader: Loader,
    checkpoint: str,
    device: torch.device,
    steps_list: Sequence[int],
    n_samples: int,
    batch_size: int,
    backend: str = "auto",
) -> list[dict[str, Any]]:
    """For each step count: generate ``n_samples`` samples, time it, and evaluate them.

    Returns one dict per step count with ``seconds`` (all samples), ``seconds_per_batch`` and
    the metrics of ``evaluate``.
    """
    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"n_samples and batch_size must be >= 1, got {n_samples}, {batch_size}")
    bench_model = loader(checkpoint, device)
    results = []
    for steps in steps_list:
        chunks, elapsed, done = [], 0.0, 0
        while done < n_samples:
            size = min(batch_size, n_samples - done)
            synchronize(device)
            t0 = time.perf_counter()
            out = dk.generate(
                bench_model.denoiser, mask_id=bench_model.mask_id, batch_size=size,
                seq_len=bench_model.seq_len, steps=steps, seed=done, progress=False, backend=backend,
                device=device, **bench_model.generate_kwargs,
            )
            synchronize(device)
            elapsed += time.perf_counter() - t0
            chunks.append(out.cpu())
            done += size
        n_batches = (n_samples + batch_size - 1) // batch_size
        metrics = bench_model.evaluate(torch.cat(chunks))
        results.append({"steps": steps, "samples": n_samples, "batch": batch_size, "seconds": elapsed,
                        "seconds_per_batch": elapsed / n_batches, **metrics})
    return results
