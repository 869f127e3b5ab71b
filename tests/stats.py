"""Statistical helpers for the sampling tests (no SciPy needed)."""

from __future__ import annotations

import torch


def chi2_sf(stat: float, dof: int) -> float:
    """Survival function of the chi-square distribution, P(X >= stat)."""
    if dof <= 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64),
                                         torch.tensor(stat / 2.0, dtype=torch.float64)))


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson chi-square goodness-of-fit p-value of ``counts`` [V] against ``probs`` [V].

    Cells whose expected count is below ``min_expected`` are pooled into one cell. A draw that
    lands where ``probs`` is zero gives p = 0 (an impossible outcome was sampled).
    """
    counts = counts.to(torch.float64)
    probs = probs.to(torch.float64)
    n = counts.sum()
    if bool(((probs == 0) & (counts > 0)).any()):
        return 0.0
    expected = probs * n
    big = expected >= min_expected
    obs = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    return chi2_sf(stat, int(keep.sum()) - 1)


def bonferroni_alpha(alpha: float, tests: int) -> float:
    """Per-test significance level for ``tests`` comparisons at family-wise level ``alpha``."""
    return alpha / max(tests, 1)
