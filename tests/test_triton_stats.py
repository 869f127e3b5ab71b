"""Distribution tests of the Triton sampler: chi-square goodness of fit, with power checks.

Each configuration draws N tokens from one row of logits (N rows with distinct Philox row ids, so
the draws are independent) and compares the counts with the exact filtered distribution computed
here in float64. Every test also checks that the same counts REJECT the distributions a typical
bug would produce (wrong temperature, top-k off by one, top-p without renormalisation), so the
tests are strong enough to catch them. The fp32 Gumbel tail bias is tested exactly on the noise.
"""

from __future__ import annotations

import math

import pytest
import torch

from dbert_kernels import random as rnd

from .stats import bonferroni_alpha, chi2_pvalue
from .triton_devices import DEVICES, require_triton

pytest.importorskip("triton")

pytestmark = [
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),
]

ALPHA = 1e-3  # family-wise level of each test's goodness-of-fit checks
VOCAB = 53  # not a power of two


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


def draw(dev, x, banned, n, temperature, top_k, top_p, seed=0):
    """Counts [V] of ``n`` independent Triton draws from the row ``x``; also the confidences."""
    import dbert_kernels as dk

    logits = x.to(dev).expand(n, -1).contiguous()
    tok, conf = dk.sample(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                          banned_ids=banned.nonzero()[:, 0].tolist(), seed=seed, backend="triton")
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


@pytest.mark.parametrize("device", DEVICES)
def test_chi_square_goodness_of_fit_and_power(device):
    dev = require_triton(device)
    n = 4000 if device == "cpu" else 200_000
    alpha = bonferroni_alpha(ALPHA, len(CASES))
    for i, (temperature, top_k, top_p, alternatives) in enumerate(CASES):
        x, banned = _row(i)
        counts, tok, conf = draw(dev, x, banned, n, temperature, top_k, top_p, seed=100 + i)
        probs = filtered_probs(x, banned, temperature, top_k, top_p)
        p_value = chi2_pvalue(counts, probs)
        assert p_value > alpha, (temperature, top_k, top_p, p_value)
        # the confidence is the token's probability under the renormalised filtered distribution
        torch.testing.assert_close(conf.double(), probs[tok], rtol=1e-5, atol=1e-7)
        for name, t_alt, k_alt, p_alt, renorm in alternatives:
            alt = filtered_probs(x, banned, t_alt, k_alt, p_alt, renorm)
            assert chi2_pvalue(counts, alt) < alpha, f"the test cannot detect: {name}"


@pytest.mark.parametrize("device", DEVICES)
def test_low_temperature_tail(device):
    """At T = 0.1 a token 0.46 below the top is drawn with probability ~1%, not less."""
    dev = require_triton(device)
    n = 6000 if device == "cpu" else 400_000
    x = torch.full((VOCAB,), -30.0)
    x[3], x[40:50] = 2.0, 2.0 - 0.46  # one top token, ten tail tokens at exp(-4.6) each
    banned = torch.zeros(VOCAB, dtype=torch.bool)
    counts, _, _ = draw(dev, x, banned, n, 0.1, None, None, seed=5)
    probs = filtered_probs(x, banned, 0.1, None, None)
    assert counts[40:50].sum() > 0
    assert chi2_pvalue(counts, probs) > ALPHA / 2
    assert chi2_pvalue(counts, filtered_probs(x, banned, 0.09, None, None)) < ALPHA / 2


@pytest.mark.parametrize("device", DEVICES)
def test_gumbel_noise_tail_is_exact_beyond_fp32_limit(device):
    """P(Gumbel > x) of the kernels' noise is exact to 0.1% for x up to 24.

    A naive float32 ``-log(-log(u))`` cannot exceed ~16.6, so it under-samples every token more
    than 16.6 / T logits below the top (the low-temperature bias). The noise is ``-log E`` with
    ``E = exponential_from_bits(hi, lo)`` of a 46-bit uniform grid ``v = (j + 0.5) 2**-46``, and
    ``E`` is increasing in ``j``: so ``P(g > x) = #{j : E_j < e**-x} / 2**46``, found here by
    evaluating the kernels' own function at the crossing.
    """
    from .test_triton_kernels import kernel_exponential

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
