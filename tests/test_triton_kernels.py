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
from dbert_kernels.triton_backend import noise, sampling  # noqa: E402  (after the importorskip)

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


def test_one_compiled_kernel_per_logits_dtype():
    """Only the block shape is compiled into the sampling kernel: every option is a run-time
    argument that Triton does not specialise on (an int equal to 1 would otherwise compile another
    copy), so that one compiled kernel per logits dtype serves every call."""
    import inspect

    params = inspect.signature(sampling._sample_kernel.fn).parameters.values()
    assert {p.name for p in params if p.annotation is tl.constexpr} == {"BLOCK_R", "BLOCK_V", "SLOTS"}
    flags = {"has_ids", "greedy", "use_topk", "use_topp", "with_entropy", "with_margin", "top_k", "n_rows"}
    assert flags <= set(sampling.NO_SPECIALIZE)
    if hasattr(sampling._sample_kernel, "params"):  # compiled, not interpreted: what the decorator took
        assert flags <= {p.name for p in sampling._sample_kernel.params if p.do_not_specialize}


@triton.jit
def _cut_probe_kernel(x_ptr, w_ptr, z_ptr, out_ptr, top_k, top_p, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
    """The sampling kernel's histogram cuts on one block of rows: per row, the top-k cut and its
    candidate count from the logits, and the top-p cut and its count from the weights and their
    float64 normaliser."""
    rows = tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_V)
    x = tl.load(x_ptr + rows[:, None] * BLOCK_V + cols[None, :])
    w = tl.load(w_ptr + rows[:, None] * BLOCK_V + cols[None, :])
    finite = (x > float("-inf")) & (x < float("inf"))
    hist_x = sampling._histogram((noise.float_key(x) >> (32 - sampling.X_BITS)) + sampling.X_BINS // 2, finite,
                                 BLOCK_R, BLOCK_V, sampling.X_BINS)
    cut_x, n_x = sampling._topk_cut(hist_x, top_k, BLOCK_R)
    hist_w = sampling._histogram(noise.float_key(w) >> sampling.W_SHIFT, w > 0.0, BLOCK_R, BLOCK_V, sampling.W_BINS)
    cut_w, n_w = sampling._topp_cut(hist_w, tl.load(z_ptr + rows), top_p, BLOCK_R)
    tl.store(out_ptr + rows * 4, cut_x)
    tl.store(out_ptr + rows * 4 + 1, n_x)
    tl.store(out_ptr + rows * 4 + 2, cut_w)
    tl.store(out_ptr + rows * 4 + 3, n_w)


def _float_key(x: torch.Tensor) -> torch.Tensor:
    bits = torch.where(x == 0, torch.zeros_like(x), x).view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@pytest.mark.parametrize("device", DEVICES)
def test_histogram_cuts_hold_the_kept_set_in_the_fewest_bins(device):
    """Top-k: the cut is the lowest key of the key bin (top ``X_BITS`` bits) holding the k-th
    largest finite logit, and the count is the finite logits at or above it (every logit that
    top-k keeps, and no more than its bin adds); fewer than k finite logits: no cut, all of them.
    Top-p: every weight that top-p keeps (the reference's rule) lies at or above the cut, the count
    is the positive weights there, and the cut is the highest bin edge for which the counts'
    bound proves that (a bin higher would lose a kept weight or be unproven)."""
    from dbert_kernels import reference as ref

    dev = require_triton(device)
    g = torch.Generator().manual_seed(11)
    rows, vocab, k, top_p = 8, 512, 30, 0.9
    x = torch.randn(rows, vocab, generator=g) * torch.tensor([0.5, 1, 2, 3, 4, 6, 8, 3.0])[:, None]
    x[1, :40] = 7.0  # a block of equal largest values
    x[2, 20:] = float("-inf")  # fewer than k finite logits
    x[3, ::3] = float("-inf")
    w = ref.exp_weight(x - x.amax(dim=1, keepdim=True))
    z = w.double().sum(dim=1)
    out = torch.zeros(rows, 4, dtype=torch.int32, device=dev)
    _cut_probe_kernel[(1,)](x.to(dev), w.to(dev), z.to(dev), out, k, top_p, BLOCK_R=rows, BLOCK_V=vocab)
    out = out.cpu()
    shift = 32 - sampling.X_BITS.value
    for r in range(rows):
        finite = torch.isfinite(x[r])
        key = _float_key(x[r])[finite]
        if int(finite.sum()) < k:
            assert out[r, 0] == -(2**31) and out[r, 1] == int(finite.sum())
        else:
            kth_key = int(_float_key(torch.topk(x[r][finite], k).values[-1:]))
            edge = (kth_key >> shift) << shift
            assert int(out[r, 0]) == edge, r
            assert int(out[r, 1]) == int((key >= edge).sum()), r
        kept = ref._top_p_keep(w[r : r + 1], top_p)[0] & (w[r] > 0)
        wkey = _float_key(w[r])
        cut_w = int(out[r, 2])
        assert bool((wkey[kept] >= cut_w).all()), r
        assert int(out[r, 3]) == int(((wkey >= cut_w) & (w[r] > 0)).sum()), r
        # one bin higher would leave out a kept weight or be unproven: its bound is not above need by
    # the slack
        higher = cut_w + (1 << sampling.W_SHIFT.value)
        below = w[r][(w[r] > 0) & (wkey < higher)]
        bins = _float_key(below) >> sampling.W_SHIFT.value
        upper = ((bins + 1) << sampling.W_SHIFT.value).view(torch.float32).double()
        slack = float(z[r]) * sampling.TOPP_SLACK.value * 1.01
        assert bool((wkey[kept] < higher).any()) or float(z[r] - upper.sum()) <= top_p * float(z[r]) + slack, r


def test_persistent_grid_keeps_the_rows_in_flight_within_half_the_l2(monkeypatch):
    """On a GPU the grid is at most two programs per SM (the register file's limit), at least one
    per SM, fewer where the rows in flight (one per program) would exceed half of the L2 cache,
    and never more than the tiles."""
    monkeypatch.setattr(sampling, "INTERPRETED", False)
    monkeypatch.setattr(sampling, "_device_caps", lambda index: (132, 50 * 2**20))  # an H100 SXM
    cuda = torch.device("cuda", 0)
    assert sampling.programs(4096, 30522 * 2, cuda) == 264  # bf16: 16 MB in flight
    assert sampling.programs(4096, 30522 * 4, cuda) == 214  # fp32: 25 MB / 122 KB
    assert sampling.programs(4096, 50257 * 4, cuda) == 132  # one per SM at least
    assert sampling.programs(7, 30522 * 2, cuda) == 7
    assert sampling.programs(4096, 30522 * 2, torch.device("cpu")) == 2  # the interpreter's grid
