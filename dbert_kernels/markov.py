"""A ground-truth language and its exact denoiser: measure a sampler's error with nothing else in the way.

Following Tang et al., "Is Your Diffusion Sampler Actually Correct?" (arXiv 2602.19619): the data
is a known first-order Markov chain, and the denoiser is replaced by the **exact** posterior of each
masked position given every visible token. Any gap between the samples and the chain is then the
sampler's own error (revealing several positions at once from their marginals, choosing which
position to reveal from the sampled token, ...), never the model's.

* :class:`MarkovChain`: a seeded chain over ``V`` tokens (Zipf-like rows, some transitions exactly
  impossible), with the exact log-likelihood of a sequence, the exact entropy rate
  ``H(X_1..X_L) / L``, the exact position marginals and bigram marginals, and seeded samples.
  float64 throughout.
* :class:`OracleDenoiser`: a :class:`~dbert_kernels.denoisers.Denoiser` over the vocabulary
  ``V + 1`` (``mask_id = V``; its logit is ``-inf``) whose logits at a masked position are the
  exact log-probabilities ``log P(x_i | visible tokens)`` (``-inf`` for impossible tokens).
* :func:`sampler_metrics`: NLL per token under the chain against the exact entropy rate, the rate
  of impossible transitions, the total-variation distance of the bigram frequencies to the exact
  bigram marginals, and distinct-n.

The posterior of a masked position ``i`` depends only on the nearest visible tokens around it
(the Markov property): with ``a`` visible at ``l < i`` and ``c`` at ``r > i``,
``P(x_i = v | ...) ∝ (T^(i-l))[a, v] (T^(r-i))[v, c]`` (the forward-backward recursion over the
masked span, closed form); with nothing visible on the left the first factor is the marginal
``P(x_i = v)``, with nothing on the right the second is 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .denoisers import Denoiser

__all__ = ["MarkovChain", "OracleDenoiser", "sampler_metrics", "distinct_n"]

_F64 = torch.float64


class MarkovChain:
    """A first-order Markov chain: ``init [V]`` and ``trans [V, V]`` (rows sum to 1), float64."""

    def __init__(self, init: torch.Tensor, trans: torch.Tensor) -> None:
        init = torch.as_tensor(init, dtype=_F64)
        trans = torch.as_tensor(trans, dtype=_F64)
        v = init.numel()
        if init.dim() != 1 or trans.shape != (v, v):
            raise ValueError(f"init must be [V] and trans [V, V]; got {tuple(init.shape)} and {tuple(trans.shape)}")
        if bool((init < 0).any()) or bool((trans < 0).any()):
            raise ValueError("probabilities must be >= 0")
        if abs(float(init.sum()) - 1) > 1e-9 or bool(((trans.sum(1) - 1).abs() > 1e-9).any()):
            raise ValueError("init and every row of trans must sum to 1")
        self.init = init
        self.trans = trans
        self.vocab_size = v
        self._powers: torch.Tensor | None = None  # [n + 1, V, V]: T^0 .. T^n
        self._marginals: torch.Tensor | None = None  # [n, V]: P(x_0) .. P(x_{n-1})

    @classmethod
    def random(cls, vocab_size: int = 256, *, seed: int = 0, zipf: float = 1.0, sparsity: float = 0.5,
               min_support: int = 2) -> MarkovChain:
        """A seeded Zipf-like chain.

        Every row ranks the tokens in its own random order and gives rank ``k`` (from 0) the weight
        ``(k + 1) ** -zipf``; then each entry of rank ``>= min_support`` is set to exactly 0 with
        probability ``sparsity`` (impossible transitions). The initial distribution is Zipf over a
        random order too (no zeros).
        """
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if not 0 <= sparsity < 1:
            raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
        if not 1 <= min_support <= vocab_size:
            raise ValueError(f"min_support must lie in [1, vocab_size], got {min_support}")
        gen = torch.Generator().manual_seed(seed)
        v = vocab_size
        rank = torch.argsort(torch.rand(v, v, generator=gen, dtype=_F64), dim=1).argsort(dim=1)
        weight = (rank.to(_F64) + 1.0) ** -zipf
        drop = (torch.rand(v, v, generator=gen, dtype=_F64) < sparsity) & (rank >= min_support)
        weight = weight.masked_fill(drop, 0.0)
        trans = weight / weight.sum(dim=1, keepdim=True)
        init_rank = torch.randperm(v, generator=gen).to(_F64)
        init = (init_rank + 1.0) ** -zipf
        return cls(init / init.sum(), trans)

    # ------------------------------------------------------------------ exact quantities
    def _ensure(self, length: int) -> None:
        have = 0 if self._powers is None else self._powers.shape[0] - 1
        if have >= length:
            return
        powers = [torch.eye(self.vocab_size, dtype=_F64)]
        for _ in range(length):
            powers.append(powers[-1] @ self.trans)
        self._powers = torch.stack(powers)
        marg = [self.init]
        for _ in range(length - 1):
            marg.append(marg[-1] @ self.trans)
        self._marginals = torch.stack(marg)

    def powers(self, length: int) -> torch.Tensor:
        """``[length + 1, V, V]``: ``T^0 .. T^length``."""
        self._ensure(length)
        return self._powers[: length + 1]

    def marginals(self, length: int) -> torch.Tensor:
        """``[length, V]``: the exact distribution of each position, ``P(x_i = v)``."""
        self._ensure(length)
        return self._marginals[:length]

    def bigram_marginals(self, length: int, average: bool = True) -> torch.Tensor:
        """Exact ``P(x_i = a, x_{i+1} = b)``: ``[length - 1, V, V]``, or averaged over ``i`` ``[V, V]``."""
        if length < 2:
            raise ValueError(f"bigrams need length >= 2, got {length}")
        pair = self.marginals(length)[:-1, :, None] * self.trans[None]
        return pair.mean(dim=0) if average else pair

    def entropy_rate(self, length: int) -> float:
        """Exact ``H(X_1..X_L) / L`` in nats: ``[H(init) + sum_i sum_a P(x_i = a) H(T[a])] / L``."""
        row_h = -torch.special.xlogy(self.trans, self.trans).sum(dim=1)
        h0 = float(-torch.special.xlogy(self.init, self.init).sum())
        rest = float((self.marginals(length)[:-1] @ row_h).sum()) if length > 1 else 0.0
        return (h0 + rest) / length

    def log_likelihood(self, seqs: torch.Tensor) -> torch.Tensor:
        """``[N]`` float64 ``log P(x)`` of ``seqs [N, L]`` (``-inf`` if any transition is impossible)."""
        seqs = torch.as_tensor(seqs, dtype=torch.int64).cpu()
        self._check_ids(seqs)
        out = torch.log(self.init[seqs[:, 0]])
        if seqs.shape[1] > 1:
            out = out + torch.log(self.trans[seqs[:, :-1], seqs[:, 1:]]).sum(dim=1)
        return out

    def impossible_transitions(self, seqs: torch.Tensor) -> torch.Tensor:
        """``[N, L - 1]`` bool: transitions of ``seqs`` that have probability 0."""
        seqs = torch.as_tensor(seqs, dtype=torch.int64).cpu()
        self._check_ids(seqs)
        return self.trans[seqs[:, :-1], seqs[:, 1:]] == 0

    def sample(self, n: int, length: int, seed: int = 0) -> torch.Tensor:
        """``[n, length]`` int64 sequences drawn from the chain (seeded, float64 inverse CDF)."""
        gen = torch.Generator().manual_seed(seed)
        cdf_init = torch.cumsum(self.init, 0)
        cdf = torch.cumsum(self.trans, 1)
        u = torch.rand(length, n, generator=gen, dtype=_F64)
        out = torch.empty(n, length, dtype=torch.int64)
        last = self.vocab_size - 1
        out[:, 0] = torch.searchsorted(cdf_init, u[0], right=True).clamp(max=last)
        for i in range(1, length):
            rows = cdf[out[:, i - 1]]
            out[:, i] = torch.searchsorted(rows, u[i, :, None], right=True).squeeze(1).clamp(max=last)
        return out

    def _check_ids(self, seqs: torch.Tensor) -> None:
        if seqs.dim() != 2 or seqs.shape[1] < 1:
            raise ValueError(f"sequences must be [N, L] with L >= 1, got {tuple(seqs.shape)}")
        if seqs.numel() and (int(seqs.min()) < 0 or int(seqs.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")

    # ------------------------------------------------------------------ the exact posterior
    def conditionals(self, ids: torch.Tensor, masked: torch.Tensor, rows: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ``log P(x_i | visible tokens)`` at the positions of ``rows`` (default: ``masked``).

        ``ids [B, L]`` (any value at masked positions), ``masked [B, L]`` bool. Returns
        ``(logp [R, V] float64, inconsistent [R] bool)`` in the row-major order of ``rows``. A
        visible position gets its own token (log-probability 0). Where the visible tokens admit no
        completion at all (possible only after a sampler revealed an impossible combination), the
        conditional is undefined: the row falls back to the left-context conditional
        ``P(x_i | x_l)`` (or the marginal) and is flagged in ``inconsistent``.
        """
        rows = masked if rows is None else rows
        length = ids.shape[1]
        v = self.vocab_size
        ids, masked, rows = ids.cpu(), masked.cpu(), rows.cpu()
        fwd_table, bwd_table = self._tables(length)
        pos = torch.arange(length)
        vis = ~masked
        left = torch.where(vis, pos, torch.full_like(pos, -1)).cummax(dim=1).values
        right = torch.where(vis, pos, torch.full_like(pos, length)).flip(1).cummin(dim=1).values.flip(1)
        b, i = rows.nonzero(as_tuple=True)
        lb, rb = left[b, i], right[b, i]
        safe_ids = torch.where(vis, ids, torch.zeros_like(ids))
        a = safe_ids[b, lb.clamp(min=0)]
        c = safe_ids[b, rb.clamp(max=length - 1)]
        # forward factor: row (i - l, a) of T^(i-l), or the marginal of position i (no left token);
        # backward factor: column c of T^(r-i), or ones (no right token): one gather each
        fwd_row = torch.where(lb >= 0, (i - lb) * v + a, (length + 1) * v + i)
        bwd_row = torch.where(rb < length, (rb - i) * v + c, torch.full_like(c, (length + 1) * v))
        fwd = fwd_table[fwd_row]
        prob = fwd * bwd_table[bwd_row]
        total = prob.sum(dim=1, keepdim=True)
        bad = total.squeeze(1) <= 0
        if bool(bad.any()):
            prob[bad] = fwd[bad]
            total[bad] = fwd[bad].sum(dim=1, keepdim=True)
        prob /= total
        own = masked[b, i]
        if not bool(own.all()):
            prob[~own] = torch.nn.functional.one_hot(safe_ids[b, i][~own], v).to(_F64)
        return prob.log_(), bad & own

    def _tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat gather tables for :meth:`conditionals`, cached per ``length``:
        ``fwd [(length + 1) V + length, V]`` (rows of ``T^d`` for ``d = 0..length``, then the
        marginals) and ``bwd [(length + 1) V + 1, V]`` (columns of ``T^d``, then ones)."""
        if getattr(self, "_tables_len", None) != length:
            v = self.vocab_size
            pw = self.powers(length)
            fwd = torch.cat([pw.reshape(-1, v), self.marginals(length)])
            bwd = torch.cat([pw.transpose(1, 2).reshape(-1, v), torch.ones(1, v, dtype=_F64)])
            self._tables_cache = (fwd.contiguous(), bwd.contiguous())
            self._tables_len = length
        return self._tables_cache


class OracleDenoiser(Denoiser):
    """The exact denoiser of a :class:`MarkovChain`, for :func:`~dbert_kernels.generate`.

    The vocabulary seen by the sampler is ``V + 1``: tokens ``0 .. V - 1`` of the chain and
    ``mask_id = V`` (its logit is always ``-inf``). Pass ``banned_ids=[]`` to ``generate`` (its
    default bans bert-base-uncased's special ids, which are chain tokens here). Logits are the
    exact log-probabilities computed in float64 and returned as float32 (``-inf`` where the token is
    impossible). Time-agnostic; no block cache (``cache=`` needs a BERT-style encoder).

    Counters: ``calls``, ``rows_asked`` and ``inconsistent`` (rows whose visible tokens admit no
    completion, see :meth:`MarkovChain.conditionals`).
    """

    def __init__(self, chain: MarkovChain) -> None:
        self.chain = chain
        self.mask_id = chain.vocab_size
        self.vocab_size = chain.vocab_size + 1
        self.calls = 0
        self.rows_asked = 0
        self.inconsistent = 0

    def log_probs(self, ids: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """float64 ``[R, V]`` exact conditionals over the chain's tokens (no mask column)."""
        masked = ids == self.mask_id
        logp, bad = self.chain.conditionals(ids, masked, rows)
        self.inconsistent += int(bad.sum())
        return logp

    def logits(self, ids: torch.Tensor, t: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows_asked += int(rows.sum())
        logp = self.log_probs(ids, rows)
        out = torch.empty((logp.shape[0], self.vocab_size), dtype=torch.float32)
        out[:, : self.chain.vocab_size] = logp
        out[:, self.chain.vocab_size] = -math.inf
        return out.to(ids.device)


def distinct_n(seqs: torch.Tensor, n: int) -> float:
    """Distinct n-grams over all n-grams of ``seqs [N, L]`` (pooled over sequences)."""
    seqs = torch.as_tensor(seqs, dtype=torch.int64).cpu()
    if seqs.shape[1] < n:
        return float("nan")
    grams = seqs.unfold(1, n, 1).reshape(-1, n)
    return torch.unique(grams, dim=0).shape[0] / grams.shape[0]


@dataclass
class _Summary:
    n: int
    mean: float
    se: float


def _mean_se(x: torch.Tensor) -> _Summary:
    n = x.numel()
    if n == 0:
        return _Summary(0, math.nan, math.nan)
    se = float(x.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
    return _Summary(n, float(x.mean()), se)


def sampler_metrics(chain: MarkovChain, seqs: torch.Tensor, max_n: int = 4) -> dict[str, float]:
    """The sampler-error metrics of ``seqs [N, L]`` against ``chain``'s exact values.

    * ``nll_per_token``: the mean over sequences of ``-log P`` per token, where a sequence's
      zero-probability tokens are left out (their ``-log P`` is infinite; they are counted by the
      impossible rates instead); ``nll_se``: its standard error; ``entropy_rate``: the exact
      ``H(X_1..X_L) / L``; ``nll_gap``: their difference (0 in expectation for exact samples;
      < 0: samples too likely, mode-seeking; > 0: too unlikely). ``nll_possible_seqs``: the mean
      ``-log P(x) / L`` over the possible sequences only (NaN if there are none).
    * ``impossible_seq_rate``: sequences with at least one zero-probability transition (or first
      token); ``impossible_transition_rate``: zero-probability transitions per transition.
    * ``bigram_tv``: total variation between the bigram frequencies (pooled over positions) and
      the exact position-averaged bigram marginals (> 0 even for exact samples: compare with the
      chain's own samples of the same size).
    * ``distinct_1`` .. ``distinct_{max_n}``.
    """
    seqs = torch.as_tensor(seqs, dtype=torch.int64).cpu()
    n, length = seqs.shape
    terms = torch.log(chain.init[seqs[:, :1]])
    if length > 1:
        terms = torch.cat([terms, torch.log(chain.trans[seqs[:, :-1], seqs[:, 1:]])], dim=1)
    finite = torch.isfinite(terms)
    possible = finite.all(dim=1)
    per_seq = -torch.where(finite, terms, torch.zeros_like(terms)).sum(1) / finite.sum(1).clamp_min(1)
    nll = _mean_se(per_seq[finite.any(dim=1)])
    h = chain.entropy_rate(length)
    out: dict[str, float] = {
        "samples": n, "length": length, "entropy_rate": h, "nll_per_token": nll.mean, "nll_se": nll.se,
        "nll_gap": nll.mean - h, "nll_possible_seqs": _mean_se(-terms[possible].sum(1) / length).mean,
        "impossible_seq_rate": float((~possible).double().mean()),
    }
    if length > 1:
        bad = chain.impossible_transitions(seqs)
        out["impossible_transition_rate"] = float(bad.double().mean())
        v = chain.vocab_size
        pairs = seqs[:, :-1] * v + seqs[:, 1:]
        freq = torch.bincount(pairs.reshape(-1), minlength=v * v).to(_F64) / pairs.numel()
        out["bigram_tv"] = 0.5 * float((freq - chain.bigram_marginals(length).reshape(-1)).abs().sum())
    for k in range(1, max_n + 1):
        out[f"distinct_{k}"] = distinct_n(seqs, k)
    return out
