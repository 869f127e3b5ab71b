"""The Triton kernels' own building blocks: Philox words and noise against the reference, the
exactness of the Gumbel tail, and launcher limits.

The samplers, masking and unmasking of every backend (Triton included, on the CPU and on a GPU)
are compared with the reference in ``tests/test_backends_equivalence.py``, their distributions in
``tests/test_distributions.py``. These tests run the noise helpers through small Triton kernels of
their own, under the interpreter on the CPU and on a CUDA GPU.
"""

from __future__ import annotations

import math

import pytest
import torch

import dbert_kernels as dk
from dbert_kernels import random as rnd

from .triton_devices import DEVICES, require_triton

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
from dbert_kernels.triton_backend import noise  # noqa: E402  (after the importorskip)

# NumPy warnings of the interpreter on -inf arithmetic that the kernels mask out afterwards
pytestmark = [
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),
]

SEEDS = [0, 12345, (1 << 32) + 7, (1 << 63) + 99, (1 << 64) - 1]


@triton.jit
def _noise_kernel(cols_ptr, rows_ptr, rng_ptr, out_ptr, fout_ptr, n, STREAM: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    col = tl.load(cols_ptr + i, mask=ok, other=0)
    row = tl.load(rows_ptr + i, mask=ok, other=0)
    w0, w1, w2, w3 = noise.philox_block(tl.load(rng_ptr), col, row, STREAM, tl.load(rng_ptr + 1))
    tl.store(out_ptr + i, w0.to(tl.int64), mask=ok)
    tl.store(out_ptr + n + i, w1.to(tl.int64), mask=ok)
    tl.store(out_ptr + 2 * n + i, w2.to(tl.int64), mask=ok)
    tl.store(out_ptr + 3 * n + i, w3.to(tl.int64), mask=ok)
    tl.store(fout_ptr + i, noise.uniform_from_bits(w0), mask=ok)
    tl.store(fout_ptr + n + i, noise.exponential_from_bits(w0, w1), mask=ok)


@triton.jit
def _words_kernel(hi_ptr, lo_ptr, out_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < n
    hi = tl.load(hi_ptr + i, mask=ok, other=0).to(tl.uint32)
    lo = tl.load(lo_ptr + i, mask=ok, other=0).to(tl.uint32)
    tl.store(out_ptr + i, noise.exponential_from_bits(hi, lo), mask=ok)


def kernel_noise(seed, cols, rows, stream, offset):
    """Run the noise helpers of the kernels; returns (4 words, uniform, exponential)."""
    from dbert_kernels.random import rng_tensor
    from dbert_kernels.triton_backend.launch import LAUNCH_OPTIONS

    n = cols.numel()
    out = torch.zeros(4, n, dtype=torch.int64, device=cols.device)
    fout = torch.zeros(2, n, dtype=torch.float32, device=cols.device)
    _noise_kernel[(triton.cdiv(n, 1024),)](
        cols, rows, rng_tensor(seed, offset, cols.device), out, fout, n, STREAM=stream, BLOCK=1024,
        **LAUNCH_OPTIONS,
    )
    return out, fout[0], fout[1]


def kernel_exponential(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """The kernels' ``exponential_from_bits`` of given words (int64 tensors holding uint32)."""
    from dbert_kernels.triton_backend.launch import LAUNCH_OPTIONS

    out = torch.empty(hi.numel(), dtype=torch.float32, device=hi.device)
    _words_kernel[(triton.cdiv(hi.numel(), 1024),)](hi, lo, out, hi.numel(), BLOCK=1024, **LAUNCH_OPTIONS)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", SEEDS)
def test_philox_words_and_noise_match_reference(device, seed):
    dev = require_triton(device)
    g = torch.Generator().manual_seed(seed % 1000)
    n = 3001 if device == "cpu" else 1 << 20
    cols = torch.randint(0, 1 << 31, (n,), generator=g).to(dev)
    rows = torch.randint(0, 1 << 40, (n,), generator=g).to(dev)  # reduced modulo 2**32 by both
    cols[:5] = torch.tensor([0, 1, (1 << 31) - 1, 30521, 2])
    for stream in (rnd.STREAM_SAMPLE, rnd.STREAM_CONFIDENCE):
        words, uni, expo = kernel_noise(seed, cols, rows, stream, 77)
        ref_words = rnd.philox_words(seed, cols, rows, stream, 77, device=dev)
        for got, want in zip(words, ref_words, strict=True):
            assert torch.equal(got, want)
        assert torch.equal(uni, rnd.uniform_from_bits(ref_words[0]))
        want_e = rnd.exponential_from_bits(ref_words[0], ref_words[1])
        # the series branch (the Gumbel tail) is bit-exact; the log branch may differ by an ulp
        # (NumPy's or the GPU's log against PyTorch's)
        small = want_e < rnd.EXP_SERIES_CUTOFF
        assert bool(small.any())
        assert torch.equal(expo[small], want_e[small])
        torch.testing.assert_close(expo, want_e, rtol=2.5e-7, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_exponential_tail_words_bit_exact(device):
    """Crafted words with tiny v (the extreme Gumbel tail, g up to ~32) match the reference."""
    dev = require_triton(device)
    g = torch.Generator().manual_seed(3)
    n = 4096
    hi = (torch.randint(0, 64, (n,), generator=g) << 9) | torch.randint(0, 512, (n,), generator=g)
    lo = torch.randint(0, 1 << 32, (n,), generator=g)
    hi[:3] = 0
    lo[:3] = torch.tensor([0, 511, 1 << 9])
    hi, lo = hi.to(dev), lo.to(dev)
    got = kernel_exponential(hi, lo)
    want = rnd.exponential_from_bits(hi, lo)
    assert torch.equal(got, want)
    assert float(-torch.log(got[0])) > 31.0  # the largest Gumbel value is ~31.7, not fp32's 16.6


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_raise(device):
    dev = require_triton(device)
    logits = torch.randn(4, 200, generator=torch.Generator().manual_seed(0)).to(dev)
    with pytest.raises(ValueError):
        dk.sample(logits, top_k=0, backend="triton")
    with pytest.raises(ValueError):
        dk.sample(logits, seed=-1, backend="triton")
    with pytest.raises(ValueError):
        dk.sample(logits, banned_ids=list(range(200)), backend="triton")
    from dbert_kernels.triton_backend.unmask import MAX_LENGTH, launch_topk_unmask

    long = torch.full((1, MAX_LENGTH + 1), 103, device=dev)
    with pytest.raises(ValueError, match="reference"):
        launch_topk_unmask(long, long, long.float(), torch.ones(1, dtype=torch.int64, device=dev),
                           torch.zeros(2, dtype=torch.int64, device=dev), 103, 0.0)


@pytest.mark.parametrize("device", DEVICES)
def test_gumbel_noise_tail_is_exact_beyond_fp32_limit(device):
    """P(Gumbel > x) of the kernels' noise is exact to 0.1% for x up to 24.

    A naive float32 ``-log(-log(u))`` cannot exceed ~16.6, so it under-samples every token more
    than 16.6 / T logits below the top (the low-temperature bias). The noise is ``-log E`` with
    ``E = exponential_from_bits(hi, lo)`` of a 46-bit uniform grid ``v = (j + 0.5) 2**-46``, and
    ``E`` is increasing in ``j``: so ``P(g > x) = #{j : E_j < e**-x} / 2**46``, found here by
    evaluating the kernels' own function at the crossing.
    """
    dev = require_triton(device)
    for x in (17.0, 20.0, 24.0):
        threshold = math.exp(-x)
        guess = int(threshold * 2.0**46)
        j = torch.arange(guess - 64, guess + 64, dtype=torch.int64)
        hi, lo = (j >> 23) << 9, (j & ((1 << 23) - 1)) << 9
        e = kernel_exponential(hi.to(dev), lo.to(dev)).cpu()
        assert torch.equal(e, rnd.exponential_from_bits(hi, lo))
        below = e < threshold
        assert bool(below[0]) and not bool(below[-1]) and bool((below[:-1] >= below[1:]).all())
        tail = (int(j[below][-1]) + 1) / 2.0**46  # P(E < e**-x) on the grid
        exact = -math.expm1(-threshold)
        assert abs(tail / exact - 1.0) < 1e-3, (x, tail, exact)


class _LaunchCounter:
    """Stands in for a ``@triton.jit`` kernel and counts its launches (``kernel[grid](...)``)."""

    def __init__(self, kernel) -> None:
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


@pytest.mark.parametrize("device", DEVICES)
def test_launcher_picks_the_resident_kernel_for_top_k_on_rows_that_fit(device, monkeypatch):
    """``resident=None`` runs the kernel :func:`picks_resident` names: the resident one with top-k
    on a row that fits, the streamed one without top-k or when the row is too long; True and False
    force a kernel (True falls back to the streamed one when the row does not fit)."""
    from dbert_kernels.triton_backend import sampling

    dev = require_triton(device)
    assert sampling.picks_resident(30522, torch.bfloat16, 30)
    assert sampling.picks_resident(50257, torch.bfloat16, 30)
    assert not sampling.picks_resident(50257, torch.float32, 30)  # block 65536 > 32768 for fp32
    assert not sampling.picks_resident(30522, torch.bfloat16, 0)
    assert not sampling.picks_resident(300, torch.float32, 300)  # top_k >= V: no top-k
    counters = {name: _LaunchCounter(getattr(sampling, name)) for name in ("_sample_resident_kernel", "_sample_kernel")}
    for name, counter in counters.items():
        monkeypatch.setattr(sampling, name, counter)
    row_index = torch.arange(3, device=dev)
    prob = torch.ones(3, device=dev)

    def kernel_run(top_k: int, resident: bool | None, vocab: int = 300) -> str:
        before = {name: c.launches for name, c in counters.items()}
        logits = torch.randn(3, vocab, device=dev)
        banned = torch.zeros(vocab, dtype=torch.bool, device=dev)
        sampling.launch_sample(logits, None, prob, banned, row_index, torch.zeros(2, dtype=torch.int64, device=dev), -1, 1.0, False, top_k, 1.0,
                               False, False, resident=resident)
        (ran,) = [name for name, c in counters.items() if c.launches > before[name]]
        return "resident" if ran == "_sample_resident_kernel" else "streamed"

    assert kernel_run(30, None) == "resident"
    assert kernel_run(0, None) == "streamed"
    assert kernel_run(0, True) == "resident"
    assert kernel_run(30, False) == "streamed"
    long = 1 + sampling.RESIDENT_MAX_BLOCK[4]
    assert kernel_run(30, True, vocab=long) == "streamed"


@pytest.mark.parametrize("device", DEVICES)
def test_resident_top_k_candidates_come_from_the_first_pivot_with_k_above(device):
    """The resident kernel's coarse top-k cut is the first of the pivots ``m - span * j / 16``
    (j = 1..15, float32) with at least k allowed logits at or above it: the candidates that take
    slots are exactly the finite logits at or above that pivot (a cut one pivot too low would
    still give the right tokens, only more slow-path rows)."""
    import numpy as np

    from dbert_kernels.random import rng_tensor
    from dbert_kernels.triton_backend import sampling
    from dbert_kernels.triton_backend.launch import LAUNCH_OPTIONS

    dev = require_triton(device)
    g = torch.Generator().manual_seed(5)
    rows, vocab, k = 16, 3001, 30
    x = torch.randn(rows, vocab, generator=g) * 3
    x[3, :40] = 50.0  # a block of equal largest values
    x[5, 100:] = float("-inf")
    banned = torch.zeros(vocab, dtype=torch.bool)
    banned[[0, 7]] = True
    want = []
    for row in x.masked_fill(banned, float("-inf")).numpy():
        m = row[np.isfinite(row)].max()
        span = np.float32(m - np.where(row > -np.inf, row, m).min())
        pivots = [np.float32(m - np.float32(span * np.float32(j / 16))) for j in range(1, 16)]
        cut = next((v for v in pivots if (row >= v).sum() >= k), -np.inf)
        want.append(int(((row >= cut) & np.isfinite(row)).sum()))
    block = sampling.resident_block(vocab, torch.float32)
    block_r = rows if device == "cpu" else 1
    slot_n = torch.zeros(rows, dtype=torch.int32, device=dev)
    out = torch.empty(rows, dtype=torch.int64, device=dev)
    conf = torch.empty(rows, device=dev)
    x, banned = x.to(dev), banned.to(dev)
    sampling._sample_resident_kernel[(rows // block_r,)](
        x, x.stride(0), out, torch.ones(rows, device=dev), banned.view(torch.int8), torch.arange(rows, device=dev),
        rng_tensor(1, 0, dev), out, conf, conf, conf, torch.empty(rows, sampling.COMPACT_SLOTS, device=dev),
        torch.empty(rows, sampling.COMPACT_SLOTS, dtype=torch.int32, device=dev), slot_n, rows, vocab, -1, 1.0, k, 1.0,
        HAS_IDS=False, GREEDY=False, USE_TOPK=True, USE_TOPP=False, WITH_ENTROPY=False, WITH_MARGIN=False,
        BLOCK_R=block_r, BLOCK_V=block, SLOTS=sampling.COMPACT_SLOTS, PARTS=sampling.resident_parts(block),
        num_warps=4 if device == "cpu" else sampling.resident_warps(block), **LAUNCH_OPTIONS,
    )
    assert max(want) <= sampling.COMPACT_SLOTS  # every row takes the slot path
    assert slot_n.cpu().tolist() == want
