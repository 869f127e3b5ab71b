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
    Rows that are unmasked already keep their token with confidence 1, entropy 0, margin 1; masked
    rows not revealed stay ``mask_id`` with confidence 0, entropy NaN, margin NaN (their logits
    are never read). A revealed row (``params``: :class:`~dbert_kernels.params.SamplingParams`)
    is computed as follows; every step is float32 with each operation rounded (no fused
    multiply-add) unless it says float64:

    0. ``x = logits.float()``. Banned ids are never read. The row cannot be sampled when an
       allowed logit is NaN or +inf, or no allowed logit is finite: then token ``-1`` and NaN
       confidence, entropy and margin (the public op raises instead when ``validate=True``).
    1. ``m`` = the largest allowed logit, ``a`` = its first id (ties to the lower id).
    2. top-k (``0 < top_k < V``): keep allowed ``x >= kth`` where ``kth`` is the k-th largest
       allowed logit (ties at the boundary are all kept); otherwise keep every allowed id.
    3. scaled logits ``s = (x - m) * inv_temperature`` (``<= 0``, ``0`` at ``a``: no overflow for
       any finite logits and temperature) and weights ``w = exp_weight(s)`` (:func:`exp_weight`,
       one polynomial shared bit for bit by every backend; ``w_a = 1``); ``w = 0`` outside the
       kept set.
    4. top-p (``top_p < 1``): keep id i iff ``A_i < P * Z`` in float64, where ``Z`` is the float64
       sum of the kept weights, ``A_i`` the float64 sum of the kept weights strictly greater than
       ``w_i`` and ``P`` = ``top_p`` rounded to float32. (Equal weights are kept or dropped
       together; ``a`` is always kept. Sums in any order: the decision is exact up to float64
       rounding, ~1e-16 relative.)
    5. token: ``a`` when ``params.greedy``; else Gumbel-max ``argmax(s_i + g_i)`` over the kept
       set (float32 add, ties to the lower id) with ``g = -log E`` and ``E`` the Exp(1) variate of
       ``philox(seed; col=i, row=row_index[r], STREAM_SAMPLE, offset)``.
    6. with ``Z`` the float64 sum of the final kept weights: confidence ``= w_token / Z``;
       entropy ``= log Z - sum(w_i s_i) / Z`` over kept ``w_i > 0``; margin
       ``= (w_a - w_2) / Z`` with ``w_2`` the largest kept weight at an id other than ``a`` (0 if
       none); each computed in float64 and rounded to float32.
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
    SeedLike,
    exponential_from_bits,
    philox_words,
    uniform_from_bits,
)
from .schedules import spindle_keep_probability

__all__ = ["spindle_mask", "sample", "topk_unmask", "keep_probability", "reveal_rows"]

# Rows of logits processed at once, so that the [rows, V] noise tensors stay small.
_CHUNK_ELEMENTS = 1 << 22


def keep_probability(
    ids: torch.Tensor, base: torch.Tensor, amp: torch.Tensor, info: torch.Tensor, protected: torch.Tensor, form: str
) -> torch.Tensor:
    """Per-token keep probability ``[B, L]`` float32 (protected positions get 1).

    ``base``/``amp``: ``[B]`` float32 alphabar(t) and spindle amplitude S(t) per row; ``info``:
    ``[V]`` float32 token information; ``protected``: ``[V]`` bool; ``form``: ``"none"``,
    ``"code"`` or ``"paper"``.
    """
    ids = ids.to(torch.int64)  # (a uint8 tensor would index as a mask)
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


def _f32(value: float, device: torch.device) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=device)


def exp_weight(s: torch.Tensor) -> torch.Tensor:
    """The softmax weight ``w = exp(s)`` of float32 scaled logits ``s <= 0`` (``-inf`` allowed).

    Every backend evaluates exactly this float32 sequence (Cephes' ``expf``: range reduction by
    ``n = round(s log2 e)``, a degree-5 polynomial, scaling by ``2**n``; each operation rounded to
    float32, no fused multiply-add), so the weights, and with them the top-p set, agree bit for
    bit. ``s < -87`` gives 0.
    """
    dev = s.device
    under = s < -87.0
    t = torch.where(under, _f32(-87.0, dev), s)
    magic = _f32(12582912.0, dev)  # 1.5 * 2**23: adding and subtracting it rounds to an integer
    n = (t * _f32(1.44269504088896341, dev) + magic) - magic
    r = t - n * _f32(0.693359375, dev)
    r = r - n * _f32(-2.12194440e-4, dev)
    r2 = r * r
    y = r * _f32(1.9875691500e-4, dev) + _f32(1.3981999507e-3, dev)
    y = y * r + _f32(8.3334519073e-3, dev)
    y = y * r + _f32(4.1665795894e-2, dev)
    y = y * r + _f32(1.6666665459e-1, dev)
    y = y * r + _f32(5.0000001201e-1, dev)
    y = y * r2 + r + _f32(1.0, dev)
    scale = ((n.to(torch.int32) + 127) << 23).view(torch.float32)
    return torch.where(under, _f32(0.0, dev), y * scale)


def _top_p_keep(w: torch.Tensor, top_p: float) -> torch.Tensor:
    """Top-p on float32 weights ``w`` [n, V] (0 outside the kept set): keep ``w_i`` iff the
    float64 sum of the weights strictly greater than ``w_i`` is ``< float32(top_p) * sum(w)``."""
    w64 = w.to(torch.float64)
    total = w64.sum(dim=1, keepdim=True)
    ascending = torch.sort(w64, dim=1).values
    count_gt = w64.shape[1] - torch.searchsorted(ascending, w64, right=True)
    top_down = torch.cumsum(ascending.flip(1), dim=1)  # sums of the largest 1, 2, ... weights
    above = torch.cat([torch.zeros_like(total), top_down], dim=1).gather(1, count_gt)
    return above < float(_f32(top_p, w.device)) * total


def _sample_rows(
    x: torch.Tensor, rows: torch.Tensor, params: SamplingParams, seed: SeedLike, offset: SeedLike
) -> tuple[torch.Tensor, ...]:
    """Sample one token per row of float32 logits ``x`` [n, V]; ``rows``: Philox row ids [n].

    Returns ``(token, confidence, entropy, margin)``, each ``[n]``; bad rows get ``-1`` / NaN.
    """
    dev = x.device
    vocab = x.shape[1]
    allowed = ~params.banned[None, :]
    bad = ((torch.isnan(x) | (x == float("inf"))) & allowed).any(dim=1)
    x = torch.where(allowed, x, _f32(float("-inf"), dev))
    bad = bad | ~(x > float("-inf")).any(dim=1)
    x = torch.where(bad[:, None] & allowed, _f32(0.0, dev), x)  # computed, then discarded
    m = x.amax(dim=1, keepdim=True)
    argmax = torch.argmax(x, dim=1)  # first maximum: ties go to the lower id
    keep = allowed.expand_as(x)
    if 0 < params.top_k < vocab:
        kth = torch.topk(x, params.top_k, dim=1).values[:, -1:]
        keep = keep & (x >= kth)
    s = (x - m) * _f32(params.inv_temperature, dev)
    w = torch.where(keep, exp_weight(s), _f32(0.0, dev))
    if params.top_p < 1.0:
        keep = keep & _top_p_keep(w, params.top_p)
        w = torch.where(keep, w, _f32(0.0, dev))
    if params.greedy:
        token = argmax
    else:
        if torch.compiler.is_compiling():  # static shapes: noise for every id
            cols = torch.arange(vocab, device=dev)[None, :]
            w0, w1, _, _ = philox_words(seed, cols, rows[:, None], STREAM_SAMPLE, offset, device=dev)
            score = torch.where(keep, s - torch.log(exponential_from_bits(w0, w1)), _f32(float("-inf"), dev))
        else:  # Gumbel noise only where it can matter (the kept ids): the same draws, fewer of them
            r_idx, c_idx = keep.nonzero(as_tuple=True)
            w0, w1, _, _ = philox_words(seed, c_idx, rows[r_idx], STREAM_SAMPLE, offset, device=dev)
            score = torch.full_like(s, float("-inf"))
            score[r_idx, c_idx] = s[r_idx, c_idx] - torch.log(exponential_from_bits(w0, w1))
        token = torch.argmax(score, dim=1)
    w64 = w.to(torch.float64)
    z = w64.sum(dim=1)
    conf = w64.gather(1, token[:, None])[:, 0] / z
    weighted_s = torch.where(w > 0, w64 * s.to(torch.float64), torch.zeros_like(w64)).sum(dim=1)
    entropy = torch.log(z) - weighted_s / z
    second = w64.scatter(1, argmax[:, None], 0.0).amax(dim=1)
    margin = (w64.gather(1, argmax[:, None])[:, 0] - second) / z
    nan = torch.full_like(z, float("nan"))
    token = torch.where(bad, torch.full_like(token, -1), token)
    return (token,) + tuple(torch.where(bad, nan, v).to(torch.float32) for v in (conf, entropy, margin))


def sample(
    logits: torch.Tensor,
    ids: torch.Tensor | None,
    unmask_prob: torch.Tensor,
    row_index: torch.Tensor,
    mask_id: int,
    params: SamplingParams,
    seed: SeedLike,
    offset: SeedLike,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Absorbing-state categorical sampling: ``(tokens [R] int64, confidence [R] float32,
    entropy [R] float32 or None, margin [R] float32 or None)``.

    ``logits`` [R, V] (fp32/fp16/bf16), ``ids`` [R] current tokens or None (every row masked),
    ``unmask_prob`` [R] float32, ``row_index`` [R] int64 Philox row ids; ``params`` the resolved
    filters (``params.banned`` [V] bool includes ``mask_id``); ``seed`` / ``offset`` ints or 0-d
    integer tensors. Entropy and margin are None unless ``params`` asks for them.
    """
    n_rows, vocab = logits.shape
    device = logits.device
    if ids is None:
        is_masked = torch.ones(n_rows, dtype=torch.bool, device=device)
        tokens = torch.full((n_rows,), mask_id, dtype=torch.int64, device=device)
    else:
        tokens = ids.to(torch.int64).clone()
        is_masked = tokens == mask_id
    nan = _f32(float("nan"), device)
    conf = torch.where(is_masked, _f32(0.0, device), _f32(1.0, device))
    entropy = torch.where(is_masked, nan, _f32(0.0, device))
    margin = torch.where(is_masked, nan, _f32(1.0, device))
    reveal = reveal_rows(is_masked, unmask_prob, row_index, seed, offset)
    chunk = max(1, _CHUNK_ELEMENTS // vocab)
    if torch.compiler.is_compiling():  # static shapes: every row, the revealed ones kept
        for start in range(0, n_rows, chunk):
            sl = slice(start, start + chunk)
            out = _sample_rows(logits[sl].to(torch.float32), row_index[sl], params, seed, offset)
            for dest, value in zip((tokens, conf, entropy, margin), out, strict=True):
                dest[sl] = torch.where(reveal[sl], value, dest[sl])
    else:
        picked = reveal.nonzero()[:, 0]
        for start in range(0, picked.numel(), chunk):
            sel = picked[start : start + chunk]
            out = _sample_rows(logits[sel].to(torch.float32), row_index[sel], params, seed, offset)
            for dest, value in zip((tokens, conf, entropy, margin), out, strict=True):
                dest[sel] = value
    return (
        tokens,
        conf,
        entropy if params.with_entropy else None,
        margin if params.with_margin else None,
    )


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
