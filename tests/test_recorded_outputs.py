"""Bit-identity of a fixed set of op calls against outputs recorded in ``fixtures/``.

The recording (``fixtures/recorded_outputs.json``) holds, per CPU backend, the tokens, the float32
bit patterns of the confidences, the masks and the ids of a fixed set of ``sample`` /
``sample_absorbing`` / ``spindle_mask`` / ``topk_unmask`` / ``generate`` calls on small seeded
inputs. A refactor must leave every entry bit-identical; a deliberate change of behaviour
re-records only the entries it changes (``python tests/test_recorded_outputs.py --record NAME...``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

if __name__ == "__main__":  # the interpreter must be chosen before Triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

import dbert_kernels as dk

FIXTURE = Path(__file__).parent / "fixtures" / "recorded_outputs.json"
BACKENDS = ("reference", "native", "triton")
MASK = 103


def _logits(rows: int, vocab: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def _encode(value: object) -> object:
    """Tensors as plain lists (floats as their float32 bit patterns, so that equality is exact)."""
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    assert isinstance(value, torch.Tensor)
    if value.is_floating_point():
        return {"f32bits": value.to(torch.float32).contiguous().view(torch.int32).tolist()}
    return value.to(torch.int64).tolist()


def _sample_calls() -> dict:
    calls = {}
    configs = {
        "t1": dict(temperature=1.0),
        "greedy": dict(temperature=0.0),
        "topk": dict(temperature=0.7, top_k=20),
        "topp": dict(temperature=1.3, top_p=0.9),
        "topk_topp": dict(temperature=0.8, top_k=50, top_p=0.8),
    }
    for name, kw in configs.items():
        for dtype in (torch.float32, torch.bfloat16):
            x = _logits(13, 301, 1).to(dtype)
            calls[f"sample_{name}_{str(dtype)[6:]}"] = (
                lambda b, x=x, kw=kw: dk.sample(x, seed=7, offset=2, backend=b, **kw)
            )
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(104, 300, (21,), generator=g)
    ids[torch.rand(21, generator=g) < 0.6] = MASK
    prob = torch.rand(21, generator=g)
    row_index = torch.randperm(64, generator=g)[:21]
    x = _logits(21, 300, 2)
    calls["absorbing"] = lambda b: dk.sample_absorbing(
        x, ids, mask_id=MASK, unmask_prob=prob, temperature=0.9, top_k=40, top_p=0.95,
        seed=11, offset=3, row_index=row_index, backend=b,
    )
    return calls


def _mask_calls() -> dict:
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(104, 400, (4, 33), generator=g)
    counts = torch.randint(1, 1000, (400,), generator=g).float()
    calls = {}
    for form in ("code", "paper"):
        info = dk.token_information(counts, form)
        sched = dk.Schedule.spindle(form=form)
        t = torch.tensor([100.0, 400.0, 700.0, 999.0])
        calls[f"spindle_{form}"] = lambda b, info=info, sched=sched, t=t: dk.spindle_mask(
            ids, t, sched, info, mask_id=MASK, protected_ids=[0, 101, 102], seed=3, offset=1, backend=b
        )
    calls["mask_d3pm"] = lambda b: dk.spindle_mask(
        ids, 500.0, dk.Schedule(), mask_id=MASK, vocab_size=400, seed=4, backend=b
    )
    return calls


def _topk_calls() -> dict:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(104, 500, (5, 37), generator=g)
    ids[torch.rand(5, 37, generator=g) < 0.6] = MASK
    cand = torch.randint(104, 500, (5, 37), generator=g)
    conf = torch.randint(0, 9, (5, 37), generator=g).float() / 8
    k = torch.tensor([0, 3, 7, 50, 1])
    return {
        f"topk_unmask_g{gt}": lambda b, gt=gt: dk.topk_unmask(
            ids, cand, conf, k, mask_id=MASK, gumbel_temperature=gt, seed=2, offset=5, backend=b
        )
        for gt in (0.0, 0.6)
    }


def _generate_calls() -> dict:
    den = dk.BigramDenoiser(60, mask_id=3, seed=1)
    calls = {}
    for strategy in ("posterior", "topk"):
        calls[f"generate_{strategy}"] = lambda b, strategy=strategy: dk.generate(
            den, mask_id=3, batch_size=2, seq_len=10, steps=5, strategy=strategy, temperature=0.9,
            top_p=0.95, banned_ids=[0, 1, 2], seed=8, progress=False, backend=b,
        )
    return calls


def recorded_calls() -> dict:
    """Name -> function(backend) of every recorded call."""
    return {**_sample_calls(), **_mask_calls(), **_topk_calls(), **_generate_calls()}


def _available(backend: str) -> bool:
    return backend in dk.available_backends(torch.device("cpu"))


def _load() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(recorded_calls()))
def test_outputs_match_the_recording(name, backend):
    if backend == "triton":
        pytest.importorskip("triton")
    if not _available(backend):
        pytest.skip(f"backend {backend} is not available here")
    want = _load()[backend].get(name)
    if want is None:
        pytest.skip(f"no recording of {name} on {backend}")
    got = _encode(recorded_calls()[name](backend))
    assert got == want, f"{name} on {backend} differs from the recording"


def record(names: list[str]) -> None:
    """Re-record ``names`` (all when empty) on every available CPU backend."""
    data = _load() if FIXTURE.exists() else {}
    calls = recorded_calls()
    for backend in BACKENDS:
        if not _available(backend):
            continue
        entries = data.setdefault(backend, {})
        for name in names or sorted(calls):
            entries[name] = _encode(calls[name](backend))
    FIXTURE.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] != ["--record"]:
        sys.exit("usage: python tests/test_recorded_outputs.py --record [NAME...]")
    record(sys.argv[2:])
