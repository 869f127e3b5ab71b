"""The GPU script's smoke tests: the Triton backend against the reference at a production shape.

``bash bench/gpu.sh`` runs this file (its ``cuda-tests`` part) on a GPU, where the whole CUDA
suite does not fit the script's budget. Each test draws with the Triton backend and with the
reference for the same seed and compares: tokens equal except at most two rows (a Gumbel
near-tie can move by one ulp between GPU and CPU-order arithmetic), confidence (and entropy /
margin) close on the rows that match.

Environment:

* ``DBERT_SMOKE_ROWS`` / ``DBERT_SMOKE_VOCAB`` / ``DBERT_SMOKE_DTYPE``: the sampling shape
  (default 4096 x 30522 bfloat16, the production one; tiny under the rehearsal);
* ``DBERT_SMOKE_GEN``: ``batch,seq_len,steps,vocab`` of the ``generate`` test (a
  :class:`~dbert_kernels.BigramDenoiser`, whose table is ``vocab x vocab``);
* ``DBERT_SMOKE_COMPILE_JOBS``: processes that compile the Triton variants in parallel before
  the tests (Triton compiles one kernel at a time per process; pytest-xdist is not needed);
  0 or 1: none, each test compiles its own;
* ``DBERT_GPU_REHEARSE=1``: run on the CPU under the Triton interpreter (``TRITON_INTERPRET=1``)
  at a tiny shape (``bash bench/gpu.sh --rehearse``); without it and without a GPU they skip.

The full CUDA suite: ``python -m pytest -m cuda tests/test_triton_integration.py
tests/test_backends_equivalence.py tests/test_triton_kernels.py tests/test_distributions.py
tests/test_compile.py`` (docs/bench.md).
"""

from __future__ import annotations

import os

import pytest
import torch

import dbert_kernels as dk

REHEARSE = os.environ.get("DBERT_GPU_REHEARSE", "0") not in ("", "0")
DEVICE = "cpu" if REHEARSE else "cuda"
ROWS = int(os.environ.get("DBERT_SMOKE_ROWS", 6 if REHEARSE else 4096))
VOCAB = int(os.environ.get("DBERT_SMOKE_VOCAB", 300 if REHEARSE else 30522))
DTYPE = getattr(torch, os.environ.get("DBERT_SMOKE_DTYPE", "bfloat16"))
GEN = tuple(int(x) for x in os.environ.get("DBERT_SMOKE_GEN", "2,12,3,157" if REHEARSE else "16,128,16,4096").split(","))
COMPILE_JOBS = int(os.environ.get("DBERT_SMOKE_COMPILE_JOBS", min(6, os.cpu_count() or 1)))
MASK = 103
SEED, OFFSET = 1234, 5

pytestmark = [
    pytest.mark.interpreter if REHEARSE else pytest.mark.cuda,
    # NumPy warnings of the Triton interpreter on -inf arithmetic that the kernels mask out
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

# name -> sample() options; the last one also returns entropy and margin
VARIANTS = {
    "T=1": dict(temperature=1.0),
    "greedy": dict(temperature=0.0),
    "top-k 30": dict(temperature=1.0, top_k=30),
    "top-p 0.9": dict(temperature=1.0, top_p=0.9),
    "top-k 30 + top-p 0.9": dict(temperature=0.8, top_k=30, top_p=0.9, return_entropy=True, return_margin=True),
}


def _logits(device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(ROWS, VOCAB, generator=gen) * 3.0
    return x.to(DTYPE).to(device)


def _sample(logits: torch.Tensor, name: str, backend: str) -> tuple[torch.Tensor, ...]:
    return dk.sample(logits, seed=SEED, offset=OFFSET, backend=backend, **VARIANTS[name])


def _generate(device: torch.device, backend: str) -> torch.Tensor:
    batch, seq_len, steps, vocab = GEN
    den = dk.BigramDenoiser(vocab_size=vocab, mask_id=MASK, seed=1)
    return dk.generate(den, mask_id=MASK, batch_size=batch, seq_len=seq_len, steps=steps, temperature=0.9,
                       top_k=30, prefix=[101], seed=9, progress=False, backend=backend, device=device)


def _triton_run(task: str) -> str:
    """One Triton call of a test (``task``: a variant name or ``generate``), in a worker process:
    compiles its kernels into Triton's on-disk cache. Returns an error or ''."""
    try:
        device = torch.device(DEVICE)
        if task == "generate":
            _generate(device, "triton")
        else:
            _sample(_logits(device), task, "triton")
        if device.type == "cuda":
            torch.cuda.synchronize()
        return ""
    except Exception as exc:  # the test itself reports it
        return f"{task}: {exc!r}"[:300]


@pytest.fixture(scope="module")
def dev() -> torch.device:
    """The device of the smoke tests, after compiling their Triton kernels in parallel processes."""
    pytest.importorskip("triton")
    from dbert_kernels.backends import available_backends

    if "triton" not in available_backends(DEVICE):
        if REHEARSE:
            pytest.fail("DBERT_GPU_REHEARSE=1 runs the Triton kernels on the CPU: set TRITON_INTERPRET=1")
        pytest.skip("needs a CUDA GPU (or DBERT_GPU_REHEARSE=1 with TRITON_INTERPRET=1)")
    if COMPILE_JOBS > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # one sampling variant compiles the kernel all of them run (its options are run-time
        # arguments); generate adds its own logits dtype and the unmasking kernel
        tasks = [next(iter(VARIANTS)), "generate"]
        with ProcessPoolExecutor(min(COMPILE_JOBS, len(tasks)), mp_context=multiprocessing.get_context("spawn")) as pool:
            for error in pool.map(_triton_run, tasks):
                if error:
                    print("compile run failed (the test shows it):", error)
    return torch.device(DEVICE)


def _allowed_mismatches(device: torch.device) -> int:
    """Rows whose tokens may differ: none under the interpreter (bit-exact), two on a GPU."""
    return 0 if device.type == "cpu" else 2


@pytest.mark.parametrize("name", list(VARIANTS))
def test_sample_triton_equals_reference(dev: torch.device, name: str) -> None:
    logits = _logits(dev)
    got = _sample(logits, name, "triton")
    want = _sample(logits, name, "reference")
    assert len(got) == len(want) == 2 + bool(VARIANTS[name].get("return_entropy")) + bool(VARIANTS[name].get("return_margin"))
    tokens, want_tokens = got[0], want[0]
    assert tokens.shape == (ROWS,) and tokens.dtype == torch.int64
    same = tokens == want_tokens
    assert int((~same).sum()) <= _allowed_mismatches(dev), f"{name}: {int((~same).sum())} rows differ"
    assert not bool(torch.isin(tokens, torch.tensor([0, 101, 102, MASK], device=dev)).any())
    # at V = 30522 the fp32 top-p mass sums (in different orders) may keep or drop one boundary
    # token of probability ~1e-4, which moves the normaliser by as much
    rtol = 2e-3 if "top-p" in name else 1e-4
    for g, w in zip(got[1:], want[1:], strict=True):
        torch.testing.assert_close(g[same], w[same], rtol=rtol, atol=1e-5, msg=name)


def test_generate_triton_equals_reference(dev: torch.device) -> None:
    got = _generate(dev, "triton")
    want = _generate(dev, "reference")
    batch, seq_len = GEN[:2]
    assert got.shape == want.shape == (batch, seq_len)
    assert not bool((got == MASK).any())
    differ = int((got != want).any(dim=1).sum())
    assert differ <= _allowed_mismatches(dev), f"{differ} of {batch} sequences differ"

