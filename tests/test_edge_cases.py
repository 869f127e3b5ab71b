"""Bad or extreme op inputs: each is rejected with a clear error or follows one documented rule,
the same on every CPU backend (reference, native, and Triton under the interpreter)."""

from __future__ import annotations

import pytest
import torch

import dbert_kernels as dk

from .backends_under_test import require_backend

ALL = [
    "reference",
    pytest.param("native", marks=pytest.mark.native),
    pytest.param("triton", marks=pytest.mark.interpreter),
]


def _need(backend: str) -> None:
    if backend == "triton":
        pytest.importorskip("triton")
    require_backend(backend)


def _logits(rows: int, vocab: int, seed: int, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale


# -- banned_ids -------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ALL)
def test_banned_ids_as_a_bool_mask(backend):
    _need(backend)
    x = _logits(9, 40, 1)
    x[:, 5] = 50.0  # the argmax everywhere, and banned
    mask = torch.zeros(40, dtype=torch.bool)
    mask[[5, 7]] = True
    a = dk.sample(x, banned_ids=mask, seed=2, backend=backend)
    b = dk.sample(x, banned_ids=[5, 7], seed=2, backend=backend)
    assert torch.equal(a[0], b[0]) and not bool(((a[0] == 5) | (a[0] == 7)).any())


@pytest.mark.parametrize("bad, err", [
    (torch.tensor([1.7, 2.2]), TypeError), ([1.7, 2.2], TypeError), (torch.zeros(39, dtype=torch.bool), ValueError),
    ([True, False], ValueError), ([0, 40], ValueError), ([-1], ValueError),
])
def test_bad_banned_ids_are_rejected(bad, err):
    with pytest.raises(err, match="banned_ids"):
        dk.sample(_logits(2, 40, 0), banned_ids=bad, backend="reference")


# -- generate(fixed=...) ----------------------------------------------------------------------
@pytest.mark.parametrize("fixed", [[-1, 60, -1, -1], [-1, -5, -1, -1], [-1, 1000, -1, -1]])
def test_generate_rejects_out_of_range_fixed_ids(fixed):
    den = dk.BigramDenoiser(60, mask_id=3, seed=0)
    with pytest.raises(ValueError, match="fixed"):
        dk.generate(den, mask_id=3, seq_len=4, steps=2, banned_ids=[0], fixed=torch.tensor(fixed), progress=False)


# -- topk_unmask ------------------------------------------------------------------------------
def _unmask_args(dtype=torch.int64):
    ids = torch.tensor([[3, 3, 9, 3]], dtype=dtype)
    conf = torch.tensor([[0.5, 0.9, 1.0, 0.1]])
    return ids, conf


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("cand, kw", [([-1, 4, 9, 5], {}), ([4, 60, 9, 5], {"vocab_size": 60}),
                                      ([4, 300, 9, 5], {})])
def test_topk_unmask_rejects_candidates_out_of_range(backend, cand, kw):
    _need(backend)
    dtype = torch.int8 if 300 in cand else torch.int64
    ids, conf = _unmask_args(dtype)
    with pytest.raises(ValueError, match="candidates"):
        dk.topk_unmask(ids, torch.tensor([cand]), conf, 2, mask_id=3, backend=backend, **kw)


@pytest.mark.parametrize("mask_id, err", [(3.0, TypeError), (True, TypeError), (200, ValueError)])
def test_topk_unmask_mask_id_must_be_an_int_that_fits(mask_id, err):
    ids, conf = _unmask_args(torch.int8)
    with pytest.raises(err, match="mask_id"):
        dk.topk_unmask(ids, torch.tensor([[4, 4, 9, 5]], dtype=torch.int8), conf, 2, mask_id=mask_id)


# -- spindle_mask id dtypes -------------------------------------------------------------------
@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32])
def test_spindle_mask_accepts_every_integer_dtype_alike(backend, dtype):
    _need(backend)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 100, (3, 21), generator=g)
    info = dk.token_information(torch.randint(1, 50, (100,), generator=g).float(), "code")
    kw = dict(mask_id=3, protected_ids=[0], seed=4, backend=backend)
    want = dk.spindle_mask(ids, 600.0, dk.Schedule.spindle(), info, **kw)
    got = dk.spindle_mask(ids.to(dtype), 600.0, dk.Schedule.spindle(), info, **kw)
    assert got[0].dtype == dtype and torch.equal(got[0].long(), want[0]) and torch.equal(got[1], want[1])


def test_spindle_mask_rejects_a_mask_id_that_does_not_fit_the_dtype():
    with pytest.raises(ValueError, match="mask_id"):
        dk.spindle_mask(torch.zeros(1, 4, dtype=torch.int8), 0.5, dk.Schedule(), mask_id=200, vocab_size=300)


# -- temperature and huge logits --------------------------------------------------------------
@pytest.mark.parametrize("backend", ALL)
def test_temperature_whose_inverse_overflows_is_greedy(backend):
    _need(backend)
    x = _logits(7, 50, 5)
    greedy = dk.sample(x, temperature=0.0, banned_ids=[1], seed=1, backend=backend)
    tiny = dk.sample(x, temperature=1e-39, banned_ids=[1], seed=1, backend=backend)
    assert torch.equal(tiny[0], greedy[0]) and torch.equal(tiny[1], greedy[1])
    assert bool(torch.isfinite(tiny[1]).all())


@pytest.mark.parametrize("backend", ALL)
def test_tiny_temperature_with_large_logits_picks_the_argmax(backend):
    _need(backend)
    x = _logits(6, 64, 6, scale=1e30)
    tok, conf = dk.sample(x, temperature=1e-38, banned_ids=[], seed=3, backend=backend)
    assert torch.equal(tok, x.argmax(dim=1)) and torch.equal(conf, torch.ones(6))


@pytest.mark.parametrize("backend", ALL)
def test_logits_near_float32_max_give_finite_confidence(backend):
    _need(backend)
    x = torch.tensor([[3e38, 3e38 * 0.999, -3e38, 0.0], [1.0, 3e38, 2.0, -1.0]])
    for temperature in (1.0, 0.5, 0.0):
        tok, conf = dk.sample(x, temperature=temperature, banned_ids=[], seed=9, backend=backend)
        assert tok[1] == 1 and bool(torch.isfinite(conf).all())
        assert float(conf[1]) == 1.0


# -- row_index range --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("bad", [2**32, 2**32 + 7, -1])
def test_row_index_outside_32_bits_is_rejected(backend, bad):
    _need(backend)
    with pytest.raises(ValueError, match="row_index"):
        dk.sample(_logits(2, 20, 0), banned_ids=[], row_index=torch.tensor([0, bad]), backend=backend)
    with pytest.raises(ValueError, match="row_index"):
        dk.unmask_decision(torch.ones(2, dtype=torch.bool), 0.5, row_index=torch.tensor([0, bad]))


# -- unclear errors ---------------------------------------------------------------------------
def test_meta_tensors_are_rejected_clearly():
    with pytest.raises(ValueError, match="meta tensor"):
        dk.sample(torch.empty(2, 20, device="meta"), banned_ids=[])
    with pytest.raises(ValueError, match="meta tensor"):
        dk.topk_unmask(torch.zeros(1, 4, dtype=torch.long, device="meta"), torch.zeros(1, 4, dtype=torch.long),
                       torch.zeros(1, 4), 1, mask_id=3)


@pytest.mark.parametrize("kw", [dict(T=True), dict(T=float("inf")), dict(spindle_lambda=True), dict(T="1000")])
def test_schedule_rejects_non_numbers(kw):
    with pytest.raises(ValueError):
        dk.Schedule(**kw)


# -- the top-p boundary -----------------------------------------------------------------------
@pytest.mark.parametrize("backend", ALL)
def test_top_p_boundary_is_decided_exactly(backend):
    """Mass strictly above id 1 is 0.98999987 < float32(0.99): id 1 is kept (about 1% of draws)."""
    _need(backend)
    x = torch.tensor([[0.0, -4.595107078552246]]).expand(400, 2).contiguous()
    tok, conf = dk.sample(x, top_p=0.99, banned_ids=[], seed=1, backend=backend)
    want, want_conf = dk.sample(x, top_p=0.99, banned_ids=[], seed=1, backend="reference")
    assert 0 < int((want == 1).sum()) < 20 and bool((want_conf < 1).all())
    assert torch.equal(tok, want) and torch.equal(conf, want_conf)


@pytest.mark.parametrize("backend", ALL)
def test_top_p_ties_and_boundaries_match_reference(backend):
    _need(backend)
    g = torch.Generator().manual_seed(12)
    x = torch.randint(-6, 3, (64, 37), generator=g).float() * 0.5  # many ties
    for top_p in (0.3, 0.5, 0.75, 0.9, 0.99):
        kw = dict(top_p=top_p, temperature=0.9, banned_ids=[0], seed=4, return_entropy=True)
        got = dk.sample(x, backend=backend, **kw)
        want = dk.sample(x, backend="reference", **kw)
        assert torch.equal(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=2e-7, atol=0)


# -- validate=False and rows that cannot be sampled -------------------------------------------
@pytest.mark.parametrize("backend", ALL)
def test_unsampleable_rows_give_minus_one_and_nan_without_validation(backend):
    _need(backend)
    x = _logits(6, 30, 8)
    x[1, 10] = float("nan")
    x[2, 11] = float("inf")
    x[3] = float("-inf")
    x[4] = float("-inf")
    x[4, 2] = 1.0  # only a banned id is finite
    x[5, 2] = float("nan")  # NaN at a banned id is never read: the row is fine
    kw = dict(banned_ids=[2], seed=3, temperature=0.7, top_k=5)
    tok, conf = dk.sample(x, validate=False, backend=backend, **kw)
    assert tok[1:5].tolist() == [-1, -1, -1, -1] and bool(torch.isnan(conf[1:5]).all())
    clean = x[[0, 5]].nan_to_num(nan=0.0)
    want = dk.sample(clean, row_index=torch.tensor([0, 5]), backend="reference", **kw)
    assert torch.equal(tok[[0, 5]], want[0]) and torch.equal(conf[[0, 5]], want[1])
    with pytest.raises(ValueError, match="row 1"):
        dk.sample(x, backend=backend, **kw)


@pytest.mark.parametrize("backend", ALL)
def test_validate_false_skips_range_checks_but_not_type_checks(backend):
    _need(backend)
    with pytest.raises(TypeError, match="seed"):
        dk.sample(_logits(2, 20, 0), banned_ids=[], seed=1.5, validate=False, backend=backend)
    with pytest.raises(TypeError, match="offset"):
        dk.sample(_logits(2, 20, 0), banned_ids=[], offset=torch.tensor([1, 2]), validate=False, backend=backend)


@pytest.mark.parametrize("backend", ALL)
def test_tensor_seed_and_offset_equal_ints(backend):
    _need(backend)
    x = _logits(11, 70, 2)
    for seed in (0, 7, 2**63 + 5, 2**64 - 1):
        bits = seed - 2**64 if seed >= 2**63 else seed
        a = dk.sample(x, top_k=9, banned_ids=[], seed=seed, offset=3, backend=backend)
        b = dk.sample(x, top_k=9, banned_ids=[], seed=torch.tensor(bits), offset=torch.tensor(3), backend=backend)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="offset"):
        dk.sample(x, banned_ids=[], offset=torch.tensor(2**32), backend=backend)


# -- accuracy at low temperature --------------------------------------------------------------
@pytest.mark.parametrize("backend", ALL)
def test_confidence_is_accurate_at_low_temperature(backend):
    _need(backend)
    x = _logits(64, 3001, 13, scale=3.0)
    for temperature in (0.05, 0.2):
        tok, conf = dk.sample(x, temperature=temperature, banned_ids=[], seed=2, backend=backend)
        p = torch.softmax(x.double() / temperature, dim=1).gather(1, tok[:, None])[:, 0]
        rel = ((conf.double() - p).abs() / p).max()
        assert float(rel) < 1e-5, float(rel)
