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


def filtered_distribution(
    logits: torch.Tensor, banned: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """The float64 distribution ``[R, V]`` that sampling draws from, computed independently of the
    package: banned ids removed, top-k, softmax at ``temperature``, then top-p (nucleus) renormalised."""
    x = logits.double().masked_fill(banned, float("-inf"))
    if top_k:
        x = x.masked_fill(x < torch.topk(x, top_k, dim=1).values[:, -1:], float("-inf"))
    p = torch.softmax(x / temperature, dim=1)
    if top_p:
        sp, order = torch.sort(p, dim=1, descending=True)
        drop = (torch.cumsum(sp, 1) - sp) >= top_p
        p = p.scatter(1, order, sp.masked_fill(drop, 0.0))
        p = p / p.sum(1, keepdim=True)
    return p


def entropy_of(p: torch.Tensor) -> torch.Tensor:
    """Entropy ``[R]`` (nats) of each row of the distribution ``p`` ``[R, V]``."""
    return -(p * torch.log(p.clamp_min(1e-300))).sum(1)
