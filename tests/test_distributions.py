"""Distributions of every backend's sampler: chi-square goodness of fit, with power checks.

Parametrised over :func:`tests.backends_under_test.backend_device_params` plus the reference. Each
test draws N tokens from one row of logits (the row repeated, so N independent Philox rows) and
compares the counts with the exact filtered distribution computed here in float64; the same counts
must REJECT the distributions a typical bug would produce (wrong temperature, top-k off by one,
top-p without renormalisation), so the tests would fail on a wrong distribution. The Triton
kernels under the interpreter are too slow for tens of thousands of draws: they run the
goodness-of-fit tests at the top of this file (a few thousand draws), the other backends every
test. Deterministic rules of the sampler (greedy, confidences, seeds, row ids) are here too, on
every backend.
"""

from __future__ import annotations

import pytest
import torch

import dbert_kernels as dk
from tests.backends_under_test import backend_device_params, require_backend
from tests.stats import bonferroni_alpha, chi2_pvalue

ALL = backend_device_params(with_reference=True)
#: every backend and device but the Triton interpreter (too slow for 20 000 draws)
FAST = [p for p in ALL if p.id != "triton-cpu"]

pytestmark = [
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),
]

ALPHA = 1e-3  # family-wise level of each test's goodness-of-fit checks
VOCAB = 53  # not a power of two


@pytest.fixture
def dev(backend: str, device: str) -> torch.device:
    return require_backend(backend, device)


def filtered_probs(x: torch.Tensor, banned: torch.Tensor, temperature: float, top_k, top_p, renorm=True):
    """The float64 distribution of the reference semantics (optionally without top-p renorm)."""
    x = x.double().masked_fill(banned, float("-inf"))
    if top_k is not None:
        x = x.masked_fill(x < torch.topk(x, top_k).values[-1], float("-inf"))
    p = torch.softmax(x / temperature, dim=0)
    if top_p is None:
        return p
    sp, order = torch.sort(p, descending=True)
    keep = (torch.cumsum(sp, 0) - sp) < top_p
    kept = sp.masked_fill(~keep, 0.0)
    if renorm:
        kept = kept / kept.sum()
    else:  # what an inverse-CDF draw without renormalisation gives: the rest on the last kept
        kept[int(keep.sum()) - 1] += 1.0 - float(kept.sum())
    return torch.zeros_like(p).scatter(0, order, kept)


def draw(backend, dev, x, banned, n, temperature, top_k, top_p, seed=0):
    """Counts [V] of ``n`` independent draws from the row ``x``; also the confidences."""
    logits = x.to(dev).expand(n, -1).contiguous()
    tok, conf = dk.sample(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                          banned_ids=banned.nonzero()[:, 0].tolist(), seed=seed, backend=backend)
    return torch.bincount(tok.cpu(), minlength=x.numel()), tok.cpu(), conf.cpu()


def _row(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(VOCAB, generator=g) * 1.5
    banned = torch.zeros(VOCAB, dtype=torch.bool)
    banned[[0, 7]] = True
    return x, banned


# temperature, top_k, top_p, the alternatives (a bug's distribution) that must be rejected
CASES = [
    (0.7, None, None, [("temperature x1.25", 0.875, None, None, True)]),
    (1.0, 5, None, [("top-k + 1", 1.0, 6, None, True), ("top-k - 1", 1.0, 4, None, True)]),
    (1.3, None, 0.6, [("no renormalisation", 1.3, None, 0.6, False), ("temperature x0.8", 1.04, None, 0.6, True)]),
    (0.5, 12, 0.9, [("temperature x1.25", 0.625, 12, 0.9, True), ("no renormalisation", 0.5, 12, 0.9, False)]),
]


#: (backend, device, kernel): every backend once, and the Triton kernel a second time with so few
#: slots that its filtered rows take the bisection sweeps instead of the compacted path
CHI_SQUARE = [pytest.param(*p.values, "default", id=p.id, marks=p.marks) for p in ALL] + [
    pytest.param(*p.values, "few-slots", id=f"{p.id}-few-slots", marks=p.marks) for p in ALL if p.values[0] == "triton"]


@pytest.mark.parametrize("backend, device, kernel", CHI_SQUARE)
def test_chi_square_goodness_of_fit_and_power(backend, device, kernel, dev, monkeypatch):
    cases = [(i, c) for i, c in enumerate(CASES) if kernel == "default" or c[1] is not None or c[2] is not None]
    if kernel == "few-slots":
        from dbert_kernels.triton_backend import sampling

        monkeypatch.setattr(sampling, "SLOTS", 16)
    n = 4000 if device == "cpu" else 200_000
    alpha = bonferroni_alpha(ALPHA, len(cases))
    for i, (temperature, top_k, top_p, alternatives) in cases:
        x, banned = _row(i)
        counts, tok, conf = draw(backend, dev, x, banned, n, temperature, top_k, top_p, seed=100 + i)
        probs = filtered_probs(x, banned, temperature, top_k, top_p)
        p_value = chi2_pvalue(counts, probs)
        assert p_value > alpha, (temperature, top_k, top_p, p_value)
        # the confidence is the token's probability under the renormalised filtered distribution
        torch.testing.assert_close(conf.double(), probs[tok], rtol=1e-5, atol=1e-7)
        for name, t_alt, k_alt, p_alt, renorm in alternatives:
            alt = filtered_probs(x, banned, t_alt, k_alt, p_alt, renorm)
            assert chi2_pvalue(counts, alt) < alpha, f"the test cannot detect: {name}"


@pytest.mark.parametrize("backend, device", ALL)
def test_low_temperature_tail(backend, device, dev):
    """At T = 0.1 a token 0.46 below the top is drawn with probability ~1%, not less."""
    n = 6000 if device == "cpu" else 400_000
    x = torch.full((VOCAB,), -30.0)
    x[3], x[40:50] = 2.0, 2.0 - 0.46  # one top token, ten tail tokens at exp(-4.6) each
    banned = torch.zeros(VOCAB, dtype=torch.bool)
    counts, _, _ = draw(backend, dev, x, banned, n, 0.1, None, None, seed=5)
    probs = filtered_probs(x, banned, 0.1, None, None)
    assert counts[40:50].sum() > 0
    assert chi2_pvalue(counts, probs) > ALPHA / 2
    assert chi2_pvalue(counts, filtered_probs(x, banned, 0.09, None, None)) < ALPHA / 2




def _sample(backend: str, dev: torch.device, logits: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """``dk.sample`` of ``logits`` on ``dev`` with ``backend``; results on the CPU."""
    tokens, conf = dk.sample(logits.to(dev), backend=backend, **kw)
    return tokens.cpu(), conf.cpu()


def _sample_absorbing(backend: str, dev: torch.device, logits: torch.Tensor, ids: torch.Tensor, **kw):
    """``dk.sample_absorbing`` on ``dev`` with ``backend``; results on the CPU."""
    if isinstance(kw.get("unmask_prob"), torch.Tensor):
        kw["unmask_prob"] = kw["unmask_prob"].to(dev)
    tokens, conf = dk.sample_absorbing(logits.to(dev), ids.to(dev), backend=backend, **kw)
    return tokens.cpu(), conf.cpu()


def _draw(backend: str, dev: torch.device, logits_row: torch.Tensor, n: int, **kw) -> torch.Tensor:
    """n independent draws from one distribution: the row repeated, one Philox row each."""
    tokens, _ = _sample(backend, dev, logits_row.expand(n, -1).contiguous(), **kw)
    return torch.bincount(tokens, minlength=logits_row.numel())


def _rows(n: int, vocab: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, vocab, generator=gen) * scale


@pytest.mark.parametrize("backend, device", FAST)
@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_matches_softmax_at_temperature(backend, dev, temperature):
    rows = _rows(3, 60, seed=1)
    alpha = bonferroni_alpha(ALPHA, len(rows))
    for i, row in enumerate(rows):
        counts = _draw(backend, dev, row, 20_000, temperature=temperature, banned_ids=[], seed=i)
        assert chi2_pvalue(counts, torch.softmax(row / temperature, 0)) > alpha
        # the test has power: the same counts reject a 15% wrong temperature
        assert chi2_pvalue(counts, torch.softmax(row / (temperature * 1.15), 0)) < alpha


@pytest.mark.parametrize("backend, device", FAST)
def test_banned_ids_never_sampled_even_when_most_likely(backend, dev):
    row = _rows(1, 40, seed=2)[0]
    row[[3, 7]] = 20.0
    counts = _draw(backend, dev, row, 5_000, banned_ids=[3, 7], seed=0)
    assert counts[3] == 0 and counts[7] == 0
    allowed = torch.ones(40, dtype=torch.bool)
    allowed[[3, 7]] = False
    probs = torch.softmax(row.masked_fill(~allowed, float("-inf")), 0)
    assert chi2_pvalue(counts, probs) > ALPHA


@pytest.mark.parametrize("backend, device", FAST)
@pytest.mark.parametrize("top_k", [1, 5, 17])
def test_top_k_support_and_distribution(backend, dev, top_k):
    row = _rows(1, 50, seed=3)[0]
    counts = _draw(backend, dev, row, 20_000, top_k=top_k, banned_ids=[], seed=top_k)
    order = torch.argsort(row, descending=True)
    assert int(counts[order[top_k:]].sum()) == 0
    assert bool((counts[order[:top_k]] > 0).all())  # the k-th token is reachable: no off-by-one
    probs = torch.zeros(50)
    probs[order[:top_k]] = torch.softmax(row[order[:top_k]], 0)
    assert chi2_pvalue(counts, probs) > ALPHA


@pytest.mark.parametrize("backend, device", FAST)
def test_top_k_keeps_ties_at_the_boundary(backend, dev):
    row = torch.tensor([5.0, 3.0, 3.0, 3.0, 1.0, 0.0])
    counts = _draw(backend, dev, row, 4_000, top_k=2, banned_ids=[], seed=0)
    assert bool((counts[:4] > 0).all()) and int(counts[4:].sum()) == 0


@pytest.mark.parametrize("backend, device", FAST)
def test_top_k_counts_only_allowed_tokens(backend, dev):
    row = torch.tensor([9.0, 8.0, 1.0, 0.5, 0.0])
    counts = _draw(backend, dev, row, 4_000, top_k=2, banned_ids=[0], seed=0)
    assert counts[0] == 0 and counts[1] > 0 and counts[2] > 0 and int(counts[3:].sum()) == 0


@pytest.mark.parametrize("backend, device", FAST)
@pytest.mark.parametrize("top_p", [0.3, 0.75, 0.95])
def test_top_p_nucleus_and_renormalisation(backend, dev, top_p):
    row = _rows(1, 80, seed=4, scale=1.5)[0]
    temperature = 0.8
    probs = torch.softmax(row / temperature, 0)
    sorted_p, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_p, 0) - sorted_p
    nucleus = order[before < top_p]
    expected = torch.zeros(80)
    expected[nucleus] = probs[nucleus] / probs[nucleus].sum()
    counts = _draw(backend, dev, row, 20_000, top_p=top_p, temperature=temperature, banned_ids=[], seed=5)
    assert chi2_pvalue(counts, expected) > ALPHA
    # without renormalisation the frequencies would match probs[nucleus] / 1: the test sees it
    wrong = torch.zeros(80)
    wrong[nucleus] = probs[nucleus]
    wrong[order[-1]] += 1 - float(wrong.sum())
    assert chi2_pvalue(counts, wrong) < ALPHA


@pytest.mark.parametrize("backend, device", FAST)
def test_top_k_then_top_p(backend, dev):
    row = _rows(1, 64, seed=6)[0]
    order = torch.argsort(row, descending=True)
    kept = order[:10]
    probs = torch.softmax(row[kept], 0)
    sp, o = torch.sort(probs, descending=True)
    nucleus = kept[o[(torch.cumsum(sp, 0) - sp) < 0.8]]
    expected = torch.zeros(64)
    expected[nucleus] = torch.softmax(row[nucleus], 0)
    counts = _draw(backend, dev, row, 20_000, top_k=10, top_p=0.8, banned_ids=[], seed=9)
    assert chi2_pvalue(counts, expected) > ALPHA


@pytest.mark.parametrize("backend, device", FAST)
def test_greedy_is_argmax_with_ties_to_lower_id_and_confidence_at_temperature_one(backend, dev):
    logits = _rows(32, 100, seed=7)
    logits[5, [10, 20]] = 50.0  # tie
    logits[6, 0] = 60.0  # banned maximum
    tokens, conf = _sample(backend, dev, logits, temperature=0.0, banned_ids=[0])
    expected = logits.clone()
    expected[:, 0] = float("-inf")
    assert torch.equal(tokens, expected.argmax(1))
    assert int(tokens[5]) == 10
    probs = torch.softmax(expected, 1)
    assert torch.allclose(conf, probs.gather(1, tokens[:, None])[:, 0], rtol=1e-5)


@pytest.mark.parametrize("backend, device", FAST)
def test_confidence_is_probability_under_filtered_distribution(backend, dev):
    logits = _rows(50, 70, seed=8)
    tokens, conf = _sample(backend, dev, logits, temperature=0.9, top_k=12, banned_ids=[1, 2], seed=3)
    x = logits.clone()
    x[:, [1, 2]] = float("-inf")
    kth = torch.topk(x, 12, dim=1).values[:, -1:]
    x = torch.where(x >= kth, x / 0.9, torch.full_like(x, float("-inf")))
    probs = torch.softmax(x, 1)
    assert torch.allclose(conf, probs.gather(1, tokens[:, None])[:, 0], rtol=1e-5)


@pytest.mark.parametrize("backend, device", FAST)
def test_seeded_reproducibility_and_independence(backend, dev):
    logits = _rows(200, 90, seed=9)
    a, _ = _sample(backend, dev, logits, seed=123, offset=4, banned_ids=[])
    b, _ = _sample(backend, dev, logits, seed=123, offset=4, banned_ids=[])
    c, _ = _sample(backend, dev, logits, seed=124, offset=4, banned_ids=[])
    d, _ = _sample(backend, dev, logits, seed=123, offset=5, banned_ids=[])
    assert torch.equal(a, b)
    assert (a != c).sum() > 50 and (a != d).sum() > 50


@pytest.mark.parametrize("backend, device", FAST)
def test_row_index_makes_results_independent_of_the_subset(backend, dev):
    logits = _rows(40, 55, seed=10)
    full, conf_full = _sample(backend, dev, logits, seed=7, banned_ids=[])
    pick = torch.tensor([3, 17, 18, 39])
    part, conf_part = _sample(backend, dev, logits[pick], seed=7, row_index=pick, banned_ids=[])
    assert torch.equal(part, full[pick])
    assert torch.allclose(conf_part, conf_full[pick])


@pytest.mark.parametrize("backend, device", FAST)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_fp32(backend, dev, dtype):
    logits = _rows(64, 120, seed=11).to(dtype)
    t16, c16 = _sample(backend, dev, logits, seed=2, top_p=0.9, banned_ids=[])
    t32, c32 = _sample(backend, dev, logits.float(), seed=2, top_p=0.9, banned_ids=[])
    assert torch.equal(t16, t32) and torch.equal(c16, c32)
    assert c16.dtype == torch.float32


@pytest.mark.parametrize("backend, device", FAST)
class TestAbsorbing:
    MASK = 4

    def test_unmasked_rows_keep_their_token_and_their_logits_are_not_read(self, backend, dev):
        logits = _rows(6, 30, seed=12)
        ids = torch.tensor([4, 9, 4, 11, 4, 0])
        logits[[1, 3, 5]] = float("nan")  # never read
        tokens, conf = _sample_absorbing(backend, dev, logits, ids, mask_id=self.MASK, banned_ids=[])
        assert tokens[[1, 3, 5]].tolist() == [9, 11, 0]
        assert conf[[1, 3, 5]].tolist() == [1.0, 1.0, 1.0]
        assert bool((tokens[[0, 2, 4]] != self.MASK).all())

    def test_reveal_rate_matches_the_posterior_probability(self, backend, dev):
        n = 20_000
        logits = _rows(1, 30, seed=13).expand(n, -1)
        ids = torch.full((n,), self.MASK)
        prob = 0.3
        tokens, conf = _sample_absorbing(backend, dev, logits, ids, mask_id=self.MASK, unmask_prob=prob, banned_ids=[])
        revealed = tokens != self.MASK
        rate = float(revealed.float().mean())
        assert abs(rate - prob) < 4 * (prob * (1 - prob) / n) ** 0.5
        assert bool((conf[~revealed] == 0).all()) and bool((conf[revealed] > 0).all())
        # the revealed tokens follow the softmax without [MASK]
        probs = torch.softmax(logits[0].masked_fill(torch.arange(30) == self.MASK, float("-inf")), 0)
        assert chi2_pvalue(torch.bincount(tokens[revealed], minlength=30), probs) > ALPHA

    def test_per_row_probabilities_and_mask_id_always_banned(self, backend, dev):
        logits = _rows(8, 30, seed=14)
        logits[:, self.MASK] = 100.0
        ids = torch.full((8,), self.MASK)
        prob = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1], dtype=torch.float32)
        tokens, _ = _sample_absorbing(backend, dev, logits, ids, mask_id=self.MASK, unmask_prob=prob, banned_ids=[])
        assert bool((tokens[0::2] == self.MASK).all())
        assert bool((tokens[1::2] != self.MASK).all())
