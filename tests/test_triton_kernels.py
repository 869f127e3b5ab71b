"""The Triton kernels against the reference backend, on fresh random inputs of ragged sizes.

Deterministic outputs are compared for exact equality: Philox words and noise, masks, greedy and
sampled tokens (the Gumbel noise is the same Philox stream), top-k positions. Runs under the
Triton interpreter on the CPU (small shapes) and on a CUDA GPU (production shapes).
"""

from __future__ import annotations

import pytest
import torch

import dbert_kernels as dk
from dbert_kernels import random as rnd
from dbert_kernels import reference as ref
from dbert_kernels.params import SamplingParams

from .stats import entropy_of, filtered_distribution
from .triton_devices import DEVICES, require_triton, shapes

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


def _spindle_inputs(batch, length, vocab, dtype, seed, dev):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    ids[:, 0] = 1  # [CLS]-like protected
    ids[0, length // 2 :] = 0  # padding
    base = torch.rand(batch, generator=g)
    amp = torch.rand(batch, generator=g) * 0.5
    info = torch.rand(vocab, generator=g) * 3 + 0.05
    protected = torch.zeros(vocab, dtype=torch.bool)
    protected[:3] = True
    return [t.to(dev) for t in (ids.to(dtype), base, amp, info, protected)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("form", ["none", "code", "paper"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_spindle_mask_matches_reference(device, form, dtype):
    from dbert_kernels import triton_backend as tb

    dev = require_triton(device)
    for i, (batch, length, vocab) in enumerate(
        shapes(device, [(3, 37, 211), (6, 130, 997)], [(512, 512, 30522), (4097, 61, 30522)])
    ):
        ids, base, amp, info, protected = _spindle_inputs(batch, length, vocab, dtype, i, dev)
        seed, offset = SEEDS[i + 2], 5 + i
        got_ids, got_mask = tb.spindle_mask(ids, base, amp, info, protected, form, 103, seed, offset)
        want_ids, want_mask = ref.spindle_mask(ids, base, amp, info, protected, form, 103, seed, offset)
        assert got_ids.dtype == ids.dtype and got_mask.dtype == torch.bool
        assert 0.05 < float(want_mask.float().mean()) < 0.95  # the test exercises both outcomes
        differ = got_mask != want_mask
        if differ.any():  # only where the draw ties the keep probability to float rounding
            keep = ref.keep_probability(ids, base, amp, info, protected, form)
            cols = torch.arange(length, device=dev)[None, :]
            rows = torch.arange(batch, device=dev)[:, None]
            u = rnd.uniform_from_bits(rnd.philox_words(seed, cols, rows, 0, offset, device=dev)[0])
            assert float((u - keep).abs()[differ].max()) < 1e-6
        assert torch.equal(got_ids[~differ], want_ids[~differ])


def _logits(rows, vocab, dtype, seed, dev):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=g) * 2.5
    x[:, 5] = float("-inf")  # an allowed -inf logit
    return x.to(dtype).to(dev)


CONFIGS = [  # temperature, top_k, top_p
    (1.0, None, None),
    (0.7, 40, None),
    (1.3, None, 0.8),
    (0.5, 25, 0.9),
    (0.0, None, None),
    (0.0, 7, 0.5),
    (2.0, 1, None),
]


def _sample_case(device, dtype, vocab, rows, seed, dev):
    logits = _logits(rows, vocab, dtype, seed, dev)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(104, vocab, (rows,), generator=g)
    ids[torch.rand(rows, generator=g) < 0.7] = 103
    prob = torch.rand(rows, generator=g).clamp(min=0.3)
    row_index = torch.randperm(rows * 3, generator=g)[:rows]
    return logits, ids.to(dev), prob.to(dev), row_index.to(dev)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_sample_matches_reference(device, dtype):
    from dbert_kernels import triton_backend as tb

    dev = require_triton(device)
    cases = shapes(device, [(1003, 90), (333, 61)], [(30522, 4096)])
    for c, (vocab, rows) in enumerate(cases):
        logits, ids, prob, row_index = _sample_case(device, dtype, vocab, rows, c, dev)
        banned = torch.zeros(vocab, dtype=torch.bool, device=dev)
        banned[[0, 101, 102, 103]] = True
        mismatches = 0
        for temperature, top_k, top_p in CONFIGS:
            params = SamplingParams.create(temperature=temperature, top_k=top_k, top_p=top_p, banned=banned)
            args = (ids, prob, row_index, 103, params, SEEDS[c + 1], 9)
            tok, conf, _, _ = tb.sample(logits, *args)
            want_tok, want_conf, _, _ = ref.sample(logits, *args)
            revealed = (ids == 103) & (want_tok != 103)
            assert revealed.any() and (~revealed).any()
            assert not bool(((tok == 103) & revealed).any())
            same = tok == want_tok
            mismatches += int((~same).sum())
            # at V = 30522 the fp32 top-p mass sums (different orders) may keep or drop one boundary
            # token of probability ~1e-4, which moves the normaliser by as much
            rtol = 2e-5 if device == "cpu" else 2e-3
            torch.testing.assert_close(conf[same], want_conf[same], rtol=rtol, atol=1e-6)
        if device == "cpu":
            assert mismatches == 0
        else:  # GPU log/exp may move a boundary or a Gumbel near-tie by one ulp
            assert mismatches <= 2 * len(CONFIGS), mismatches


@pytest.mark.parametrize("device", DEVICES)
def test_sample_never_reads_rows_it_does_not_sample(device):
    dev = require_triton(device)
    vocab, rows = (301, 40) if device == "cpu" else (30522, 2048)
    logits, ids, prob, row_index = _sample_case(device, torch.float32, vocab, rows, 7, dev)
    reveal = ref.reveal_rows(ids == 103, prob, row_index, 3, 4)
    poisoned = logits.clone()
    poisoned[~reveal] = float("nan")
    kw = dict(mask_id=103, unmask_prob=prob, seed=3, offset=4, row_index=row_index, validate=False)
    tok, conf = dk.sample_absorbing(poisoned, ids, backend="triton", **kw)
    want_tok, want_conf = dk.sample_absorbing(logits, ids, backend="reference", **kw)
    assert torch.equal(tok, want_tok)
    assert torch.equal(conf[~reveal], want_conf[~reveal])
    assert torch.equal(conf[ids != 103], torch.ones_like(conf[ids != 103]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("top_k", [None, 9])
def test_invalid_rows_follow_the_documented_rule(device, top_k):
    dev = require_triton(device)
    vocab = 211 if device == "cpu" else 30522
    logits = _logits(6, vocab, torch.float32, 11, dev)
    logits[1, 50] = float("nan")
    logits[2, 60] = float("inf")
    logits[3] = float("-inf")
    logits[4, :] = float("-inf")
    logits[4, 103] = 1.0  # only a banned id is finite
    logits[5, 0] = float("nan")  # NaN on a banned id is never read
    kw = dict(temperature=0.8, top_k=top_k, seed=1)
    tok, conf = dk.sample(logits, validate=False, backend="triton", **kw)
    assert tok[1:5].tolist() == [-1, -1, -1, -1]
    assert bool(torch.isnan(conf[1:5]).all())
    ok = torch.tensor([0, 5], device=dev)
    want_tok, _ = dk.sample(logits[ok].nan_to_num(nan=0.0), backend="reference", row_index=ok, **kw)
    assert torch.equal(tok[ok], want_tok)
    with pytest.raises(ValueError, match="NaN"):
        dk.sample(logits, backend="triton", **kw)


@pytest.mark.parametrize("device", DEVICES)
def test_entropy_matches_filtered_distribution(device):
    from dbert_kernels import triton_backend as tb

    dev = require_triton(device)
    vocab, rows = (517, 33) if device == "cpu" else (30522, 1024)
    logits = _logits(rows, vocab, torch.float32, 2, dev)
    banned = torch.zeros(vocab, dtype=torch.bool, device=dev)
    banned[:4] = True
    prob = torch.ones(rows, device=dev)
    row_index = torch.arange(rows, device=dev)
    for temperature, top_k, top_p in [(0.9, None, None), (1.2, 30, 0.85)]:
        params = SamplingParams.create(
            temperature=temperature, top_k=top_k, top_p=top_p, banned=banned, with_entropy=True
        )
        _, _, ent, _ = tb.sample(logits, None, prob, row_index, -1, params, 5, 0)
        want = entropy_of(filtered_distribution(logits, banned, temperature, top_k, top_p))
        torch.testing.assert_close(ent.double(), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gumbel_temperature", [0.0, 0.6])
def test_topk_unmask_matches_reference(device, gumbel_temperature):
    from dbert_kernels import triton_backend as tb

    dev = require_triton(device)
    for i, (batch, length) in enumerate(shapes(device, [(7, 37), (5, 130)], [(1024, 512), (4096, 64)])):
        g = torch.Generator().manual_seed(i)
        ids = torch.randint(104, 500, (batch, length), generator=g)
        ids[torch.rand(batch, length, generator=g) < 0.6] = 103
        cand = torch.randint(104, 500, (batch, length), generator=g)
        conf = torch.randint(0, 9, (batch, length), generator=g).float() / 8  # many ties, zeros
        k = torch.randint(0, length // 2, (batch,), generator=g)
        k[0], k[1] = 0, length + 5
        args = [t.to(dev) for t in (ids, cand, conf, k)]
        got = tb.topk_unmask(*args, 103, gumbel_temperature, SEEDS[i + 1], 3)
        want = ref.topk_unmask(*args, 103, gumbel_temperature, SEEDS[i + 1], 3)
        assert torch.equal(got, want)
        revealed = (got != args[0]).sum(1)
        assert torch.equal(revealed, torch.minimum(args[3], (args[0] == 103).sum(1)))


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_tokens(device):
    dev = require_triton(device)
    vocab, rows = (300, 64) if device == "cpu" else (30522, 4096)
    logits = _logits(rows, vocab, torch.bfloat16, 4, dev)
    a = dk.sample(logits, temperature=1.0, top_p=0.95, seed=42, backend="triton")[0]
    b = dk.sample(logits, temperature=1.0, top_p=0.95, seed=42, backend="triton")[0]
    c = dk.sample(logits, temperature=1.0, top_p=0.95, seed=43, backend="triton")[0]
    d = dk.sample(logits, temperature=1.0, top_p=0.95, seed=42, offset=1, backend="triton")[0]
    assert torch.equal(a, b)
    assert float((a != c).float().mean()) > 0.5 and float((a != d).float().mean()) > 0.5


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_raise(device):
    dev = require_triton(device)
    logits = _logits(4, 200, torch.float32, 0, dev)
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
def test_sample_strided_and_int32_inputs(device):
    """Logits rows with a stride larger than V (a slice) and int32 ids give the same draws."""
    dev = require_triton(device)
    vocab, rows = (250, 30) if device == "cpu" else (30522, 1024)
    wide = _logits(rows, vocab + 17, torch.float16, 8, dev)
    logits = wide[:, :vocab]
    ids = torch.full((rows,), 103, dtype=torch.int32, device=dev)
    ids[::3] = 200
    kw = dict(mask_id=103, temperature=0.9, top_k=50, seed=77, offset=3)
    got = dk.sample_absorbing(logits, ids, backend="triton", **kw)
    want = dk.sample_absorbing(logits.contiguous(), ids.long(), backend="reference", **kw)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=2e-5, atol=1e-6)


# temperature, top_k, top_p: cases that take each path of the resident kernel (few candidates:
# compacted; many: bisection on the resident row) and of the streamed kernel
KERNEL_PATHS = [
    (0.7, 5, None),  # top-k: compacted
    (1.0, 297, None),  # top-k keeping nearly all: too many candidates, bisection
    (1.3, None, 0.9),  # top-p: compacted or bisection, by row
    (0.5, 40, 0.6),  # both
    (1.0, None, None),  # no filter at T = 1: the Gumbel bound keeps many, bisection path's draw
    (0.05, None, None),  # no filter at low T: the Gumbel bound keeps few, compacted
    (0.0, 7, 0.5),  # greedy with filters
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_resident_and_streamed_kernels_equal_the_reference_bit_for_bit(device, dtype):
    """Tokens, confidence, entropy and margin of both sampling kernels equal the reference's."""
    from dbert_kernels.params import SamplingParams
    from dbert_kernels.random import rng_tensor
    from dbert_kernels.triton_backend.sampling import launch_sample

    dev = require_triton(device)
    vocab, rows = (300, 37) if device == "cpu" else (30522, 2048)
    logits = _logits(rows, vocab, dtype, 21, dev)
    banned = torch.zeros(vocab, dtype=torch.bool, device=dev)
    banned[[0, vocab // 2]] = True
    prob = torch.ones(rows, device=dev)
    row_index = torch.arange(rows, device=dev)
    for temperature, top_k, top_p in KERNEL_PATHS:
        if top_k is not None and top_k >= vocab:
            continue
        params = SamplingParams.create(temperature=temperature, top_k=top_k, top_p=top_p, banned=banned,
                                       with_entropy=True, with_margin=True)
        want = ref.sample(logits, None, prob, row_index, -1, params, 5, 3)
        for resident in (True, False):
            got = launch_sample(logits, None, prob, banned, row_index, rng_tensor(5, 3, dev), -1,
                                params.inv_temperature, params.greedy, params.top_k, params.top_p, True, True,
                                resident=resident)
            case = (temperature, top_k, top_p, resident)
            if device == "cpu":
                assert torch.equal(got[0], want[0]), case
                for g, w in zip(got[1:], want[1:], strict=True):
                    assert torch.equal(g, w), case
            else:  # GPU log/exp may move a Gumbel near-tie by one ulp
                assert int((got[0] != want[0]).sum()) <= 2, case
