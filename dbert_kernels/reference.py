"""The reference backend: plain PyTorch implementations of the three ops (the ground truth).

Every backend (this one, Triton, native CPU) implements these three functions with exactly these
signatures and semantics on *already validated* inputs; the public wrappers in
:mod:`dbert_kernels.ops` validate user input, resolve defaults and dispatch. All randomness comes
from :mod:`dbert_kernels.random` (Philox keyed on seed and position), so the backends can be
compared for equality, not only in distribution.

Semantics shared by all backends
--------------------------------
spindle_mask
    Position ``(b, l)`` is masked iff it is not protected and ``u >= keep`` where
    ``u = uniform(philox(seed; col=l, row=b, STREAM_MASK, offset).w0)`` and ``keep`` is the
    per-token keep probability (:meth:`Schedule.token_alphabar`, with ``base[b]`` and ``amp[b]``
    precomputed per row).
sample
    For each row r with ``ids is None`` or ``ids[r] == mask_id``, decide to unmask iff
    ``uniform(philox(seed; col=0, row=row_index[r], STREAM_UNMASK, offset).w0) < unmask_prob[r]``.
    Rows that are unmasked already keep their token with confidence 1; masked rows not revealed
    stay ``mask_id`` with confidence 0 (their logits are never read). A revealed row draws from
    the filtered distribution:

    1. ``x = logits.float()``; banned ids get ``-inf``; ``T_eff = temperature or 1``.
    2. top-k: keep ``x >= (k-th largest allowed x)`` (ties at the boundary are all kept).
    3. top-p: ``p = softmax(x / T_eff)`` over the kept set; keep token i iff the mass of kept
       tokens with probability strictly greater than ``p_i`` is ``< top_p`` (so at least the most
       likely token survives, and ties at the boundary are all kept).
    4. token: ``argmax(x)`` over allowed ids when ``temperature == 0`` (ties to the lower id), else
       Gumbel-max ``argmax(x / T + g)`` over the kept set with ``g = -log E`` and ``E`` the Exp(1)
       variate of ``philox(seed; col=v, row=row_index[r], STREAM_SAMPLE, offset)``.
    5. confidence: the token's probability under ``softmax(x / T_eff)`` restricted to the kept set.
topk_unmask
    Among positions with ``ids == mask_id``, reveal the ``min(k[b], #masked)`` with the highest
    score (ties to the lower position): ``score = confidence`` when ``gumbel_temperature == 0``,
    else ``log(confidence) + gumbel_temperature * g`` with ``g = -log E`` from
    ``philox(seed; col=l, row=b, STREAM_CONFIDENCE, offset)``.
"""

from __future__ import annotations

import torch

from .params import SamplingParams
from .random import (
    STREAM_CONFIDENCE,
    STREAM_MASK,
    STREAM_SAMPLE,
    STREAM_UNMASK,
    exponential_from_bits,
    philox_words,
    uniform_from_bits,
)
from .schedules import spindle_keep_probability

__all__ = ["spindle_mask", "sample", "topk_unmask", "keep_probability", "reveal_rows"]

# Rows of logits processed at once, so that the [rows, V] noise tensors stay small.
_CHUNK_ELEMENTS = 1 << 22


def keep_probability(
    ids: torch.Tensor,
    base: torch.Tensor,
    amp: torch.Tensor,
    info: torch.Tensor,
    protected: torch.Tensor,
    form: str,
) -> torch.Tensor:
    """Per-token keep probability ``[B, L]`` float32 (protected positions get 1).

    ``base``/``amp``: ``[B]`` float32 alphabar(t) and spindle amplitude S(t) per row; ``info``:
    ``[V]`` float32 token information; ``protected``: ``[V]`` bool; ``form``: ``"none"``,
    ``"code"`` or ``"paper"``.
    """
    return spindle_keep_probability(base, amp, info[ids], ~protected[ids], form)


def spindle_mask(
    ids: torch.Tensor,
    base: torch.Tensor,
    amp: torch.Tensor,
    info: torch.Tensor,
    protected: torch.Tensor,
    form: str,
    mask_id: int,
    seed: int,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-process masking of ``ids`` ``[B, L]``; returns (noised ids, bool mask)."""
    batch, length = ids.shape
    keep = keep_probability(ids, base, amp, info, protected, form)
    cols = torch.arange(length, device=ids.device)[None, :]
    rows = torch.arange(batch, device=ids.device)[:, None]
    w0, _, _, _ = philox_words(seed, cols, rows, STREAM_MASK, offset, device=ids.device)
    masked = uniform_from_bits(w0) >= keep
    noised = torch.where(masked, torch.full_like(ids, mask_id), ids)
    return noised, masked


def reveal_rows(
    is_masked: torch.Tensor, unmask_prob: torch.Tensor, row_index: torch.Tensor, seed: int, offset: int
) -> torch.Tensor:
    """Absorbing posterior decision: which masked rows ([R] bool) are revealed at this step."""
    w0, _, _, _ = philox_words(seed, 0, row_index, STREAM_UNMASK, offset, device=is_masked.device)
    return is_masked & (uniform_from_bits(w0) < unmask_prob)


def _sample_rows(
    x: torch.Tensor, rows: torch.Tensor, params: SamplingParams, seed: int, offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row of float32 logits ``x`` [n, V]; ``rows``: Philox row ids [n]."""
    vocab = x.shape[1]
    banned = params.banned
    x = x.masked_fill(banned[None, :], float("-inf"))
    inv_t = torch.tensor(params.inv_temperature, dtype=torch.float32)
    keep = ~banned[None, :].expand_as(x)
    if 0 < params.top_k < vocab:
        kth = torch.topk(x, params.top_k, dim=1).values[:, -1:]
        keep = keep & (x >= kth)
    scaled = x * inv_t
    if params.top_p < 1.0:
        probs = torch.softmax(scaled.masked_fill(~keep, float("-inf")), dim=1)
        sorted_p, _ = torch.sort(probs, dim=1, descending=True)
        mass_before = torch.cumsum(sorted_p, dim=1) - sorted_p
        # smallest probability whose strictly-more-likely mass is below top_p
        candidates = torch.where(mass_before < params.top_p, sorted_p, torch.full_like(sorted_p, 2.0))
        threshold = candidates.min(dim=1, keepdim=True).values
        keep = keep & (probs >= threshold)
    filtered = scaled.masked_fill(~keep, float("-inf"))
    if not params.greedy:
        # Gumbel noise only where it can matter (the kept ids): the same draws, far fewer of them
        # after a top-k / top-p filter.
        r_idx, c_idx = keep.nonzero(as_tuple=True)
        w0, w1, _, _ = philox_words(seed, c_idx, rows[r_idx], STREAM_SAMPLE, offset, device=x.device)
        score = torch.full_like(filtered, float("-inf"))
        score[r_idx, c_idx] = filtered[r_idx, c_idx] - torch.log(exponential_from_bits(w0, w1))
        token = torch.argmax(score, dim=1)
    else:
        token = torch.argmax(filtered, dim=1)  # first maximum: ties go to the lower id
    log_z = torch.logsumexp(filtered, dim=1)
    conf = torch.exp(filtered.gather(1, token[:, None])[:, 0] - log_z)
    return token, conf


def sample(
    logits: torch.Tensor,
    ids: torch.Tensor | None,
    unmask_prob: torch.Tensor,
    row_index: torch.Tensor,
    mask_id: int,
    params: SamplingParams,
    seed: int,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Absorbing-state categorical sampling: ``(tokens [R] int64, confidence [R] float32,
    entropy [R] float32 or None, margin [R] float32 or None)``.

    ``logits`` [R, V] (fp32/fp16/bf16), ``ids`` [R] current tokens or None (every row masked),
    ``unmask_prob`` [R] float32, ``row_index`` [R] int64 Philox row ids; ``params`` the resolved
    filters (``params.banned`` [V] bool includes ``mask_id``).
    """
    n_rows, vocab = logits.shape
    device = logits.device
    if ids is None:
        is_masked = torch.ones(n_rows, dtype=torch.bool, device=device)
        tokens = torch.full((n_rows,), mask_id, dtype=torch.int64, device=device)
    else:
        tokens = ids.to(torch.int64).clone()
        is_masked = tokens == mask_id
    conf = torch.where(is_masked, 0.0, 1.0).to(torch.float32)
    reveal = reveal_rows(is_masked, unmask_prob, row_index, seed, offset)
    picked = reveal.nonzero()[:, 0]
    chunk = max(1, _CHUNK_ELEMENTS // vocab)
    for start in range(0, picked.numel(), chunk):
        sel = picked[start : start + chunk]
        tok, c = _sample_rows(logits[sel].to(torch.float32), row_index[sel], params, seed, offset)
        tokens[sel] = tok
        conf[sel] = c
    return tokens, conf, None, None


def topk_unmask(
    ids: torch.Tensor,
    candidates: torch.Tensor,
    confidence: torch.Tensor,
    k: torch.Tensor,
    mask_id: int,
    gumbel_temperature: float,
    seed: int,
    offset: int,
) -> torch.Tensor:
    """Reveal the ``k[b]`` most confident masked positions of each row; returns new ids [B, L]."""
    batch, length = ids.shape
    eligible = ids == mask_id
    score = confidence.to(torch.float32)
    if gumbel_temperature > 0:
        cols = torch.arange(length, device=ids.device)[None, :]
        rows = torch.arange(batch, device=ids.device)[:, None]
        w0, w1, _, _ = philox_words(seed, cols, rows, STREAM_CONFIDENCE, offset, device=ids.device)
        gumbel = -torch.log(exponential_from_bits(w0, w1))
        score = torch.log(score) + gumbel_temperature * gumbel
    # order: eligible first, then score descending, then position ascending (stable sorts)
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    order = order.gather(1, torch.sort(eligible.gather(1, order).to(torch.int8), dim=1, descending=True, stable=True).indices)
    take = torch.minimum(k.to(torch.int64), eligible.sum(dim=1))
    rank_ok = torch.arange(length, device=ids.device)[None, :] < take[:, None]
    reveal = torch.zeros_like(eligible)
    reveal.scatter_(1, order, rank_ok)
    return torch.where(reveal, candidates.to(ids.dtype), ids)
