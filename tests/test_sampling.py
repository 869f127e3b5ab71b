"""Categorical sampling with the absorbing state (reference path): distributions and rules."""

from __future__ import annotations

import pytest
import torch

from dbert_kernels import sample, sample_absorbing
from tests.stats import bonferroni_alpha, chi2_pvalue

BACKEND = "reference"
ALPHA = 1e-3


def _draw(logits_row: torch.Tensor, n: int, **kw) -> torch.Tensor:
    """n independent draws from one distribution: the row repeated, one Philox row each."""
    tokens, _ = sample(logits_row.expand(n, -1).contiguous(), backend=BACKEND, **kw)
    return torch.bincount(tokens, minlength=logits_row.numel())


def _rows(n: int, vocab: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, vocab, generator=gen) * scale


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_matches_softmax_at_temperature(temperature):
    rows = _rows(3, 60, seed=1)
    alpha = bonferroni_alpha(ALPHA, len(rows))
    for i, row in enumerate(rows):
        counts = _draw(row, 20_000, temperature=temperature, banned_ids=[], seed=i)
        assert chi2_pvalue(counts, torch.softmax(row / temperature, 0)) > alpha
        # the test has power: the same counts reject a 15% wrong temperature
        assert chi2_pvalue(counts, torch.softmax(row / (temperature * 1.15), 0)) < alpha


def test_banned_ids_never_sampled_even_when_most_likely():
    row = _rows(1, 40, seed=2)[0]
    row[[3, 7]] = 20.0
    counts = _draw(row, 5_000, banned_ids=[3, 7], seed=0)
    assert counts[3] == 0 and counts[7] == 0
    allowed = torch.ones(40, dtype=torch.bool)
    allowed[[3, 7]] = False
    probs = torch.softmax(row.masked_fill(~allowed, float("-inf")), 0)
    assert chi2_pvalue(counts, probs) > ALPHA


@pytest.mark.parametrize("top_k", [1, 5, 17])
def test_top_k_support_and_distribution(top_k):
    row = _rows(1, 50, seed=3)[0]
    counts = _draw(row, 20_000, top_k=top_k, banned_ids=[], seed=top_k)
    order = torch.argsort(row, descending=True)
    assert int(counts[order[top_k:]].sum()) == 0
    assert bool((counts[order[:top_k]] > 0).all())  # the k-th token is reachable: no off-by-one
    probs = torch.zeros(50)
    probs[order[:top_k]] = torch.softmax(row[order[:top_k]], 0)
    assert chi2_pvalue(counts, probs) > ALPHA


def test_top_k_keeps_ties_at_the_boundary():
    row = torch.tensor([5.0, 3.0, 3.0, 3.0, 1.0, 0.0])
    counts = _draw(row, 4_000, top_k=2, banned_ids=[], seed=0)
    assert bool((counts[:4] > 0).all()) and int(counts[4:].sum()) == 0


def test_top_k_counts_only_allowed_tokens():
    row = torch.tensor([9.0, 8.0, 1.0, 0.5, 0.0])
    counts = _draw(row, 4_000, top_k=2, banned_ids=[0], seed=0)
    assert counts[0] == 0 and counts[1] > 0 and counts[2] > 0 and int(counts[3:].sum()) == 0


@pytest.mark.parametrize("top_p", [0.3, 0.75, 0.95])
def test_top_p_nucleus_and_renormalisation(top_p):
    row = _rows(1, 80, seed=4, scale=1.5)[0]
    temperature = 0.8
    probs = torch.softmax(row / temperature, 0)
    sorted_p, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_p, 0) - sorted_p
    nucleus = order[before < top_p]
    expected = torch.zeros(80)
    expected[nucleus] = probs[nucleus] / probs[nucleus].sum()
    counts = _draw(row, 20_000, top_p=top_p, temperature=temperature, banned_ids=[], seed=5)
    assert chi2_pvalue(counts, expected) > ALPHA
    # without renormalisation the frequencies would match probs[nucleus] / 1: the test sees it
    wrong = torch.zeros(80)
    wrong[nucleus] = probs[nucleus]
    wrong[order[-1]] += 1 - float(wrong.sum())
    assert chi2_pvalue(counts, wrong) < ALPHA


def test_top_k_then_top_p():
    row = _rows(1, 64, seed=6)[0]
    order = torch.argsort(row, descending=True)
    kept = order[:10]
    probs = torch.softmax(row[kept], 0)
    sp, o = torch.sort(probs, descending=True)
    nucleus = kept[o[(torch.cumsum(sp, 0) - sp) < 0.8]]
    expected = torch.zeros(64)
    expected[nucleus] = torch.softmax(row[nucleus], 0)
    counts = _draw(row, 20_000, top_k=10, top_p=0.8, banned_ids=[], seed=9)
    assert chi2_pvalue(counts, expected) > ALPHA


def test_greedy_is_argmax_with_ties_to_lower_id_and_confidence_at_temperature_one():
    logits = _rows(32, 100, seed=7)
    logits[5, [10, 20]] = 50.0  # tie
    logits[6, 0] = 60.0  # banned maximum
    tokens, conf = sample(logits, temperature=0.0, banned_ids=[0], backend=BACKEND)
    expected = logits.clone()
    expected[:, 0] = float("-inf")
    assert torch.equal(tokens, expected.argmax(1))
    assert int(tokens[5]) == 10
    probs = torch.softmax(expected, 1)
    assert torch.allclose(conf, probs.gather(1, tokens[:, None])[:, 0], rtol=1e-5)


def test_confidence_is_probability_under_filtered_distribution():
    logits = _rows(50, 70, seed=8)
    tokens, conf = sample(logits, temperature=0.9, top_k=12, banned_ids=[1, 2], seed=3, backend=BACKEND)
    x = logits.clone()
    x[:, [1, 2]] = float("-inf")
    kth = torch.topk(x, 12, dim=1).values[:, -1:]
    x = torch.where(x >= kth, x / 0.9, torch.full_like(x, float("-inf")))
    probs = torch.softmax(x, 1)
    assert torch.allclose(conf, probs.gather(1, tokens[:, None])[:, 0], rtol=1e-5)


def test_seeded_reproducibility_and_independence():
    logits = _rows(200, 90, seed=9)
    a, _ = sample(logits, seed=123, offset=4, banned_ids=[], backend=BACKEND)
    b, _ = sample(logits, seed=123, offset=4, banned_ids=[], backend=BACKEND)
    c, _ = sample(logits, seed=124, offset=4, banned_ids=[], backend=BACKEND)
    d, _ = sample(logits, seed=123, offset=5, banned_ids=[], backend=BACKEND)
    assert torch.equal(a, b)
    assert (a != c).sum() > 50 and (a != d).sum() > 50


def test_row_index_makes_results_independent_of_the_subset():
    logits = _rows(40, 55, seed=10)
    full, conf_full = sample(logits, seed=7, banned_ids=[], backend=BACKEND)
    pick = torch.tensor([3, 17, 18, 39])
    part, conf_part = sample(logits[pick], seed=7, row_index=pick, banned_ids=[], backend=BACKEND)
    assert torch.equal(part, full[pick])
    assert torch.allclose(conf_part, conf_full[pick])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_fp32(dtype):
    logits = _rows(64, 120, seed=11).to(dtype)
    t16, c16 = sample(logits, seed=2, top_p=0.9, banned_ids=[], backend=BACKEND)
    t32, c32 = sample(logits.float(), seed=2, top_p=0.9, banned_ids=[], backend=BACKEND)
    assert torch.equal(t16, t32) and torch.equal(c16, c32)
    assert c16.dtype == torch.float32


class TestAbsorbing:
    MASK = 4

    def test_unmasked_rows_keep_their_token_and_their_logits_are_not_read(self):
        logits = _rows(6, 30, seed=12)
        ids = torch.tensor([4, 9, 4, 11, 4, 0])
        logits[[1, 3, 5]] = float("nan")  # never read
        tokens, conf = sample_absorbing(logits, ids, mask_id=self.MASK, banned_ids=[], backend=BACKEND)
        assert tokens[[1, 3, 5]].tolist() == [9, 11, 0]
        assert conf[[1, 3, 5]].tolist() == [1.0, 1.0, 1.0]
        assert bool((tokens[[0, 2, 4]] != self.MASK).all())

    def test_reveal_rate_matches_the_posterior_probability(self):
        n = 20_000
        logits = _rows(1, 30, seed=13).expand(n, -1)
        ids = torch.full((n,), self.MASK)
        prob = 0.3
        tokens, conf = sample_absorbing(logits, ids, mask_id=self.MASK, unmask_prob=prob, banned_ids=[], backend=BACKEND)
        revealed = tokens != self.MASK
        rate = float(revealed.float().mean())
        assert abs(rate - prob) < 4 * (prob * (1 - prob) / n) ** 0.5
        assert bool((conf[~revealed] == 0).all()) and bool((conf[revealed] > 0).all())
        # the revealed tokens follow the softmax without [MASK]
        probs = torch.softmax(logits[0].masked_fill(torch.arange(30) == self.MASK, float("-inf")), 0)
        assert chi2_pvalue(torch.bincount(tokens[revealed], minlength=30), probs) > ALPHA

    def test_per_row_probabilities_and_mask_id_always_banned(self):
        logits = _rows(8, 30, seed=14)
        logits[:, self.MASK] = 100.0
        ids = torch.full((8,), self.MASK)
        prob = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1], dtype=torch.float32)
        tokens, _ = sample_absorbing(logits, ids, mask_id=self.MASK, unmask_prob=prob, banned_ids=[], backend=BACKEND)
        assert bool((tokens[0::2] == self.MASK).all())
        assert bool((tokens[1::2] != self.MASK).all())
