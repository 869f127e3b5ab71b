"""Every backend against the reference: same inputs, same seed, same results.

One suite, parametrised over :data:`tests.backends_under_test.BACKENDS_UNDER_TEST`. Masks, greedy
and sampled tokens (the same Philox stream) and top-k unmasking positions must be equal; the
confidences agree to float32 rounding. Inputs are ragged (vocabulary sizes that are not multiples
of the vector width, -inf logits, banned ids, ties) and come in float32 / bfloat16 / float16.
"""

from __future__ import annotations

import pytest
import torch

import dbert_kernels as dk
from tests.backends_under_test import backend_params, require_backend
from tests.stats import bonferroni_alpha, chi2_pvalue

pytestmark = pytest.mark.parametrize("backend", backend_params())

DEVICE = "cpu"


@pytest.fixture(autouse=True)
def _available(backend: str) -> None:
    require_backend(backend, DEVICE)


def _logits(rows: int, vocab: int, seed: int, dtype: torch.dtype = torch.float32, scale: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=gen) * scale
    x[torch.rand(rows, vocab, generator=gen) < 0.02] = float("-inf")  # some impossible tokens
    return x.to(dtype)


SAMPLE_CASES = [
    # (rows, vocab, temperature, top_k, top_p)
    (37, 7, 1.0, None, None),
    (64, 1000, 1.0, None, None),
    (50, 1003, 0.0, None, None),
    (41, 517, 0.7, 5, None),
    (33, 1000, 1.3, None, 0.9),
    (29, 999, 0.5, 40, 0.6),
    (30, 300, 2.0, 299, None),
    (30, 300, 1.0, 1, None),
    (20, 4099, 1.0, 700, None),  # top-k above the heap limit (nth_element path)
    (25, 257, 0.05, None, 0.3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("case", SAMPLE_CASES, ids=[f"R{c[0]}-V{c[1]}-T{c[2]}-k{c[3]}-p{c[4]}" for c in SAMPLE_CASES])
def test_sample_equals_reference(backend: str, case: tuple, dtype: torch.dtype) -> None:
    rows, vocab, temperature, top_k, top_p = case
    logits = _logits(rows, vocab, seed=rows * vocab, dtype=dtype)
    banned = [0, vocab // 2, vocab - 1] if vocab > 3 else []
    kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, banned_ids=banned, seed=2**40 + 7, offset=3)
    ref_tok, ref_conf = dk.sample(logits, backend="reference", **kwargs)
    tok, conf = dk.sample(logits, backend=backend, **kwargs)
    assert torch.equal(tok, ref_tok)
    torch.testing.assert_close(conf, ref_conf, rtol=2e-5, atol=1e-6)
    assert not bool(torch.isin(tok, torch.tensor(banned, dtype=torch.int64)).any())


def test_sample_absorbing_equals_reference(backend: str) -> None:
    """Partly masked ids, per-row reveal probabilities and global row ids."""
    rows, vocab, mask_id = 200, 1000, 103
    gen = torch.Generator().manual_seed(5)
    logits = _logits(rows, vocab, seed=9)
    ids = torch.randint(0, vocab, (rows,), generator=gen)
    ids[torch.rand(rows, generator=gen) < 0.6] = mask_id
    prob = torch.rand(rows, generator=gen)
    row_index = torch.randperm(5000, generator=gen)[:rows]
    kwargs = dict(mask_id=mask_id, unmask_prob=prob, temperature=0.9, top_k=50, seed=11, offset=17, row_index=row_index)
    ref = dk.sample_absorbing(logits, ids, backend="reference", **kwargs)
    out = dk.sample_absorbing(logits, ids, backend=backend, **kwargs)
    assert torch.equal(out[0], ref[0])
    torch.testing.assert_close(out[1], ref[1], rtol=2e-5, atol=1e-6)
    still = ref[0] == mask_id
    assert bool(still.any()) and bool((~still & (ids == mask_id)).any())  # both outcomes occur


def test_sample_ties(backend: str) -> None:
    """Integer logits with many exact ties: greedy takes the lower id, top-k keeps all ties."""
    gen = torch.Generator().manual_seed(3)
    logits = torch.randint(-3, 3, (64, 97), generator=gen).float()
    for kwargs in (dict(temperature=0.0), dict(temperature=1.0, top_k=3), dict(temperature=0.0, top_p=0.5),
                   dict(temperature=1.0, top_p=0.4)):
        ref = dk.sample(logits, banned_ids=[], seed=1, backend="reference", **kwargs)
        out = dk.sample(logits, banned_ids=[], seed=1, backend=backend, **kwargs)
        assert torch.equal(out[0], ref[0]), kwargs
        torch.testing.assert_close(out[1], ref[1], rtol=2e-5, atol=1e-6)


def test_sample_bert_vocabulary(backend: str) -> None:
    """The real size: V = 30522, default banned ids (BERT's specials)."""
    logits = _logits(48, 30522, seed=1, scale=2.0)
    for kwargs in (dict(temperature=1.0), dict(temperature=0.8, top_k=30), dict(temperature=1.0, top_p=0.95)):
        ref = dk.sample(logits, seed=3, offset=1, backend="reference", **kwargs)
        out = dk.sample(logits, seed=3, offset=1, backend=backend, **kwargs)
        assert torch.equal(out[0], ref[0]), kwargs
        torch.testing.assert_close(out[1], ref[1], rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["none", "code", "paper"])
def test_spindle_mask_equals_reference(backend: str, form: str) -> None:
    vocab = 500
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(0, vocab, (13, 71), generator=gen)
    ids[:, 0] = 101
    ids[:, -5:] = 0
    counts = torch.randint(0, 10000, (vocab,), generator=gen)
    if form == "none":
        schedule, info = dk.Schedule.d3pm(), None
    else:
        schedule, info = dk.Schedule.spindle(lam=0.5, form=form), dk.token_information(counts, form)
    t = torch.linspace(0, 1000, 13)
    kwargs = dict(mask_id=103, protected_ids=[0, 101, 102], vocab_size=vocab, seed=99, offset=4)
    ref = dk.spindle_mask(ids, t, schedule, info, backend="reference", **kwargs)
    out = dk.spindle_mask(ids, t, schedule, info, backend=backend, **kwargs)
    assert torch.equal(out[1], ref[1])
    assert torch.equal(out[0], ref[0])
    assert 0 < int(ref[1].sum()) < ref[1].numel()


@pytest.mark.parametrize("gumbel_temperature", [0.0, 0.7])
def test_topk_unmask_equals_reference(backend: str, gumbel_temperature: float) -> None:
    gen = torch.Generator().manual_seed(4)
    batch, length, mask_id = 9, 40, 103
    ids = torch.randint(200, 1000, (batch, length), generator=gen)
    ids[torch.rand(batch, length, generator=gen) < 0.7] = mask_id
    candidates = torch.randint(200, 1000, (batch, length), generator=gen)
    confidence = torch.rand(batch, length, generator=gen)
    confidence[:, ::4] = 0.5  # ties: broken by position
    confidence[0, :] = 0.0
    k = torch.randint(0, length, (batch,), generator=gen)
    kwargs = dict(mask_id=mask_id, gumbel_temperature=gumbel_temperature, seed=5, offset=2)
    ref = dk.topk_unmask(ids, candidates, confidence, k, backend="reference", **kwargs)
    out = dk.topk_unmask(ids, candidates, confidence, k, backend=backend, **kwargs)
    assert out.dtype == ids.dtype
    assert torch.equal(out, ref)


@pytest.mark.parametrize("strategy", ["posterior", "topk"])
def test_generate_equals_reference(backend: str, strategy: str) -> None:
    den = dk.BigramDenoiser(vocab_size=300, mask_id=103, seed=1)
    kwargs = dict(mask_id=103, batch_size=3, seq_len=24, steps=6, strategy=strategy, top_k=20, seed=8, progress=False)
    ref = dk.generate(den, backend="reference", **kwargs)
    out = dk.generate(den, backend=backend, **kwargs)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("kwargs", [dict(temperature=1.0), dict(temperature=0.6, top_k=6), dict(temperature=1.0, top_p=0.8)],
                         ids=["plain", "topk", "topp"])
def test_sample_distribution(backend: str, kwargs: dict) -> None:
    """Chi-square: draws over many row ids follow the filtered softmax of one fixed row."""
    vocab, draws = 12, 20000
    row = torch.tensor([1.5, 0.3, -0.2, 2.0, 0.0, 1.1, -1.0, 0.7, 0.7, -3.0, 0.4, 1.9])
    logits = row.expand(draws, vocab).contiguous()
    tok, _ = dk.sample(logits, banned_ids=[4], seed=123, backend=backend, **kwargs)
    x = row.clone()
    x[4] = float("-inf")
    keep = torch.ones(vocab, dtype=torch.bool)
    keep[4] = False
    if kwargs.get("top_k"):
        keep &= x >= torch.topk(x, kwargs["top_k"]).values[-1]
    probs = torch.softmax((x / kwargs["temperature"]).masked_fill(~keep, float("-inf")), 0)
    if kwargs.get("top_p"):
        above = torch.stack([probs[probs > p].sum() for p in probs])
        keep &= above < kwargs["top_p"]
        probs = torch.softmax((x / kwargs["temperature"]).masked_fill(~keep, float("-inf")), 0)
    counts = torch.bincount(tok, minlength=vocab)
    assert chi2_pvalue(counts, probs) > bonferroni_alpha(1e-3, 3)


@pytest.mark.parametrize("bad", ["nan", "posinf", "all_banned"])
def test_bad_logits_raise(backend: str, bad: str) -> None:
    logits = _logits(8, 50, seed=0)
    banned: list[int] = [0, 1]
    if bad == "nan":
        logits[3, 10] = float("nan")
    elif bad == "posinf":
        logits[3, 10] = float("inf")
    else:
        logits[3, 2:] = float("-inf")
    with pytest.raises(ValueError, match="row"):
        dk.sample(logits, banned_ids=banned, backend=backend)
