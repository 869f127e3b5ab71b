"""Fused categorical sampling with the absorbing posterior step: kernels, launcher, custom op.

Semantics: :func:`dbert_kernels.reference.sample` (the kernels follow it bit for bit where it is
deterministic). Per row ``r``:

1. the absorbing decision ``uniform(philox(0, row_index[r], STREAM_UNMASK, offset)) < p[r]``;
   rows that are unmasked already, or masked and not revealed, read no logits at all (their
   loads are masked off);
2. ``m`` = the largest allowed logit, ``s = (x - m) / T`` (float32), the weights
   ``w = exp_weight(s)`` (one float32 sequence shared with every backend);
3. top-k keeps ``x >= k-th largest``; top-p keeps the tokens whose float64 mass of strictly
   larger weights is ``< top_p * Z``; the token is ``argmax(s - log E)`` over the kept set (``E``
   the Philox Exp(1) variate of ``(vocab id, row_index[r], STREAM_SAMPLE, offset)``) or, greedy,
   the first largest logit; confidence, entropy and margin come from the kept weights (float64
   sums).

Two kernels: the **resident** kernel (rows up to :data:`RESIDENT_MAX_BLOCK` logits) reads each
row once and runs every step on that copy; the **streamed** kernel sweeps longer rows in blocks,
one sweep per step. Invalid rows (NaN or +inf among the allowed logits, or no finite allowed
logit), which the public op rejects when ``validate=True``: token ``-1``, confidence, entropy and
margin NaN; no read outside the row.

The custom op ``torch.ops.dbert_kernels.triton_sample`` (with a fake implementation for shape
propagation) wraps the launcher; its Philox key and offset are a tensor, so that a sampling step
can be compiled or captured in a CUDA graph without a host synchronisation.
"""

# No ``from __future__ import annotations``: torch.library reads the annotations at runtime.

import torch
import triton
import triton.language as tl

from .. import random as rnd
from .._kernel_backend import empty_sample_outputs
from .launch import INTERPRETED, LAUNCH_OPTIONS, block_size
from .noise import (
    INT32_MAX,
    INT32_MIN,
    MAX_SEARCH_STEPS,
    exp_weight,
    exponential_from_bits,
    float_key,
    philox_block,
    uniform_from_bits,
)

STREAM_SAMPLE = tl.constexpr(rnd.STREAM_SAMPLE)
STREAM_UNMASK = tl.constexpr(rnd.STREAM_UNMASK)
NEG_INF = tl.constexpr(float("-inf"))

#: Largest row (power-of-two block) the resident kernel holds, by bytes per logit; longer rows
#: use the streamed kernel.
RESIDENT_MAX_BLOCK = {2: 65536, 4: 32768}
#: Slots per row of the resident kernel's candidate buffer.
COMPACT_SLOTS = 128
#: Candidates compared at once in the pairwise top-k / top-p decisions (bounds the registers).
PAIR_CHUNK = tl.constexpr(32)
#: Pivots + 1 of the resident kernel's coarse cut (4 bits of the value range).
RADIX = tl.constexpr(16)
#: Strict upper bound of the Gumbel noise ``-log E`` (``E >= 2**-47``, so ``-log E <= 32.58``).
GUMBEL_BOUND = tl.constexpr(33.0)
#: Relative slack of the coarse top-p cut (far above the rounding of float64 mass sums).
TOPP_SLACK = tl.constexpr(1.0 + 2.0**-10)
#: Integer arguments that Triton must not specialise on (equal to 1, divisible by 16): the row
#: count changes from step to step and top-k / the mask id from call to call, and each value class
#: would otherwise compile (and cache) another copy of the kernel.
NO_SPECIALIZE = ("n_rows", "mask_id", "top_k")


@triton.jit
def _reveal(rng_ptr, row_index_ptr, ids_ptr, prob_ptr, rows, in_rows, mask_id, HAS_IDS: tl.constexpr):
    """The absorbing decision of a block of rows: (seed, offset, Philox row ids, current tokens,
    masked on entry, revealed now)."""
    seed = tl.load(rng_ptr)
    offset = tl.load(rng_ptr + 1)
    row_id = tl.load(row_index_ptr + rows, mask=in_rows, other=0)
    if HAS_IDS:
        current = tl.load(ids_ptr + rows, mask=in_rows, other=0).to(tl.int64)
    else:
        current = row_id * 0 + mask_id
    is_masked = current == mask_id
    u_w0, u_w1, u_w2, u_w3 = philox_block(seed, row_id * 0, row_id, STREAM_UNMASK, offset)
    prob = tl.load(prob_ptr + rows, mask=in_rows, other=0.0)
    active = in_rows & is_masked & (uniform_from_bits(u_w0) < prob)
    return seed, offset, row_id, current, is_masked, active


@triton.jit
def _load_logits(logits_ptr, row_off, active, banned_ptr, cols, vocab):
    """Float32 logits [BLOCK_R, n] of the columns ``cols``; -inf where banned, outside the row
    or in a row that is not read."""
    inb = cols < vocab
    allowed = active[:, None] & (inb & (tl.load(banned_ptr + cols, mask=inb, other=1) == 0))[None, :]
    return tl.load(logits_ptr + row_off[:, None] + cols[None, :], mask=allowed, other=NEG_INF).to(tl.float32)


@triton.jit
def _gumbel(seed, col, row_id, offset):
    """``log E`` of (vocabulary id ``col``, Philox row ``row_id``): the score is ``s - log E``."""
    hi_w, lo_w, g_w2, g_w3 = philox_block(seed, col, row_id, STREAM_SAMPLE, offset)
    return tl.log(exponential_from_bits(hi_w, lo_w))


@triton.jit
def _store_outputs(out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr, rows, in_rows, active, is_masked,
                   current, invalid, token, w_tok, w_top, second, z, ws, WITH_ENTROPY: tl.constexpr,
                   WITH_MARGIN: tl.constexpr):
    """Store a block of rows' outputs from the float64 sums ``z = sum w`` and ``ws = sum w s``.

    Rows not read: confidence 0 / entropy NaN / margin NaN when masked (not revealed), 1 / 0 / 1
    when unmasked on entry; invalid rows: token -1 and NaN.
    """
    nan = float("nan")
    z_safe = tl.where(z > 0.0, z, 1.0)
    token = tl.where(active, tl.where(invalid, -1, token.to(tl.int64)), current)
    conf = (w_tok.to(tl.float64) / z_safe).to(tl.float32)
    conf = tl.where(active, tl.where(invalid, nan, conf), tl.where(is_masked, 0.0, 1.0))
    tl.store(out_tok_ptr + rows, token, mask=in_rows)
    tl.store(out_conf_ptr + rows, conf, mask=in_rows)
    if WITH_ENTROPY:
        ent = (tl.log(z_safe) - ws / z_safe).to(tl.float32)
        ent = tl.where(active, tl.where(invalid, nan, ent), tl.where(is_masked, nan, 0.0))
        tl.store(out_ent_ptr + rows, ent, mask=in_rows)
    if WITH_MARGIN:
        margin = ((w_top.to(tl.float64) - second.to(tl.float64)) / z_safe).to(tl.float32)
        margin = tl.where(active, tl.where(invalid, nan, margin), tl.where(is_masked, nan, 1.0))
        tl.store(out_margin_ptr + rows, margin, mask=in_rows)


@triton.jit
def _scaled(x, m, inv_t, zero):
    """``s = (x - m) * inv_t``; ``zero`` is a 0.0 known only at run time (``m + zero == m``), so
    that each step recomputes ``s`` from the resident ``x`` instead of keeping it in registers."""
    return (x - (m + zero)[:, None]) * inv_t


@triton.jit
def _key_value(key):
    """The float32 whose :func:`float_key` is ``key`` (the key map is its own inverse)."""
    return (key ^ ((key >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _kth_largest(x, top_k, lo, hi):
    """The largest value ``v`` of ``x`` with ``#(x >= v) >= top_k``, by bisection over the keys
    (``lo``/``hi``: keys of actual values bounding it); compares values, holds no key array."""
    steps = 0
    while (tl.max((lo < hi).to(tl.int32), axis=0) > 0) & (steps < MAX_SEARCH_STEPS):
        live = lo < hi
        pivot = (lo.to(tl.int64) + ((hi.to(tl.int64) - lo.to(tl.int64) + 1) >> 1)).to(tl.int32)
        ge = x >= _key_value(pivot)[:, None]
        count = tl.sum(ge.to(tl.int32), axis=1)
        above = float_key(tl.min(tl.where(ge, x, float("inf")), axis=1))
        below = float_key(tl.max(tl.where(ge, NEG_INF, x), axis=1))
        enough = count >= top_k
        lo = tl.where(live & enough, above, lo)
        hi = tl.where(live, tl.where(enough, tl.where(count == top_k, above, hi), below), hi)
        steps += 1
    return _key_value(lo)


@triton.jit
def _topp_threshold(x, m, inv_t, x_thr, need, lo, hi):
    """The smallest kept weight: the smallest weight ``v`` whose float64 mass of strictly larger
    weights (of ``x >= x_thr``) is ``< need``, by bisection over the weights' keys."""
    steps = 0
    while (tl.max((lo < hi).to(tl.int32), axis=0) > 0) & (steps < MAX_SEARCH_STEPS):
        live = lo < hi
        pivot = (lo.to(tl.int64) + ((hi.to(tl.int64) - lo.to(tl.int64)) >> 1)).to(tl.int32)
        zero = lo.to(tl.float32) * 0.0
        w = tl.where(x >= x_thr[:, None], exp_weight(_scaled(x, m, inv_t, zero)), 0.0)
        gt = w > _key_value(pivot)[:, None]
        mass = tl.sum(tl.where(gt, w.to(tl.float64), 0.0), axis=1)
        above = float_key(tl.min(tl.where(gt, w, float("inf")), axis=1))
        below = float_key(tl.max(tl.where(gt, -1.0, w), axis=1))
        small = mass < need
        lo = tl.where(live & ~small, above, lo)
        hi = tl.where(live & small, below, hi)
        steps += 1
    return _key_value(lo)


@triton.jit
def _candidates(x, m, inv_t, cut_x, cut_w, lower, zero, CUT_W: tl.constexpr):
    """The candidates of the resident kernel: finite, ``x >= cut_x``, ``s + 33 >= lower`` and,
    with ``CUT_W``, weight ``> cut_w`` (an upward-closed set)."""
    s = _scaled(x, m, inv_t, zero)
    cand = (x >= cut_x[:, None]) & (x > NEG_INF) & (s + GUMBEL_BOUND >= lower[:, None])
    if CUT_W:
        cand = cand & (exp_weight(s) > cut_w[:, None])
    return cand


@triton.jit
def _eighths(x, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
    """The eight parts of the rows ``x`` [BLOCK_R, BLOCK_V] (part ``q``: columns
    ``q * BLOCK_V / 8 + i``), [BLOCK_R, BLOCK_V / 8] each; a thread's elements of a resident row lie
    in every part, so that the split stays in registers."""
    x_q = tl.permute(tl.reshape(x, [BLOCK_R, 8, BLOCK_V // 8]), (0, 2, 1))
    x_a, x_b = tl.split(tl.reshape(x_q, [BLOCK_R, BLOCK_V // 8, 2, 2, 2]))  # q = 4 c + 2 b + a
    x_aa, x_ab = tl.split(x_a)
    x_ba, x_bb = tl.split(x_b)
    x_0, x_4 = tl.split(x_aa)
    x_2, x_6 = tl.split(x_ab)
    x_1, x_5 = tl.split(x_ba)
    x_3, x_7 = tl.split(x_bb)
    return x_0, x_1, x_2, x_3, x_4, x_5, x_6, x_7


@triton.jit
def _compact_part(xq, q: tl.constexpr, filled, m, inv_t, cut_x, cut_w, lower, slot_x_ptr, slot_col_ptr,
                  slot_base, CUT_W: tl.constexpr, BLOCK_Q: tl.constexpr):
    """Append the candidates of the row's part ``q`` (logits ``xq``, columns ``q * BLOCK_Q + i``)
    to the slot buffer in id order after the ``filled`` slots taken by the earlier parts; returns
    the slots now taken."""
    cand = _candidates(xq, m, inv_t, cut_x, cut_w, lower, filled.to(tl.float32) * 0.0, CUT_W)
    rank = filled[:, None] + tl.cumsum(cand.to(tl.int32), axis=1) - 1
    tl.store(slot_x_ptr + slot_base[:, None] + rank, xq, mask=cand)
    tl.store(slot_col_ptr + slot_base[:, None] + rank, q * BLOCK_Q + tl.arange(0, BLOCK_Q)[None, :] + rank * 0,
             mask=cand)
    return filled + tl.sum(cand.to(tl.int32), axis=1)


@triton.jit
def _draw_part(xq, q: tl.constexpr, best, token, w_tok, m, inv_t, x_thr, w_thr, seed, row_id, offset,
               BLOCK_Q: tl.constexpr):
    """Fold the kept columns ``q * BLOCK_Q + i`` (logits ``xq``) of the row's part ``q`` into the
    running draw (best score, its token, its weight); the parts come in id order, so that ties go
    to the lower id as in one argmax over the row."""
    lanes = tl.arange(0, BLOCK_Q)
    s = _scaled(xq, m, inv_t, w_tok * 0.0)
    w = exp_weight(s)
    kept = (xq >= x_thr[:, None]) & (w >= w_thr[:, None])
    score = tl.where(kept, s - _gumbel(seed, q * BLOCK_Q + lanes[None, :], row_id[:, None], offset), NEG_INF)
    q_best, q_arg = tl.max(score, axis=1, return_indices=True)
    q_tok = q * BLOCK_Q + q_arg
    better = (q_best > best) | (token == -1)
    q_w = tl.sum(tl.where(lanes[None, :] == q_arg[:, None], w, 0.0), axis=1)
    return tl.where(better, q_best, best), tl.where(better, q_tok, token), tl.where(better, q_w, w_tok)


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _sample_resident_kernel(
    logits_ptr, stride_row, ids_ptr, prob_ptr, banned_ptr, row_index_ptr, rng_ptr,
    out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr, slot_x_ptr, slot_col_ptr,
    n_rows, vocab, mask_id, inv_t, top_k, top_p,
    HAS_IDS: tl.constexpr, GREEDY: tl.constexpr, USE_TOPK: tl.constexpr, USE_TOPP: tl.constexpr,
    WITH_ENTROPY: tl.constexpr, WITH_MARGIN: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, SLOTS: tl.constexpr,
):
    """One read of each revealed row: the row stays in registers and every step runs on it.

    1. load the row once (banned ids read as -inf), NaN / +inf check, maximum ``m``, first argmax;
    2. a coarse cut (15 pivots, 4 bits of the range): the candidates are the finite logits that
       top-k / top-p may keep (top-k: ``x >=`` the largest pivot with ``>= k`` logits above it;
       top-p: weight ``>`` the largest pivot ``2**-j`` with at least ``top_p * Z`` of mass above;
       no filter: the Gumbel bound ``s + 33 >= g(argmax)``, no other token can win), an
       upward-closed set;
    3. at most ``SLOTS`` candidates per row (the usual case with top-k or top-p): they are compacted
       in id order into a small per-row buffer, top-k and top-p are decided exactly among them
       (rank and float64 mass of strictly larger weights, compared ``PAIR_CHUNK`` at a time) and
       the noise is drawn for them only; more: bisection over the keys on the resident row;
    4. normaliser, confidence, entropy and margin: float64 sums over the resident row.

    Only ``x`` lives across the steps; scaled logits, weights and keys are recomputed inside
    each step (cheaper than the registers that holding them would cost), the coarse cuts are
    run-time loops, and the compaction and the draw over the row (whose ranks and noise would
    otherwise be held for the whole row at once) run an eighth of the row at a time.
    """
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    in_rows = rows < n_rows
    seed, offset, row_id, current, is_masked, active = _reveal(
        rng_ptr, row_index_ptr, ids_ptr, prob_ptr, rows, in_rows, mask_id, HAS_IDS
    )
    cols = tl.arange(0, BLOCK_V)
    row_off = rows.to(tl.int64) * stride_row
    x = _load_logits(logits_ptr, row_off, active, banned_ptr, cols, vocab)
    bad = tl.sum(((x != x) | (x == float("inf"))).to(tl.int32), axis=1)
    m = tl.max(tl.where(x == x, x, NEG_INF), axis=1)
    invalid = (bad > 0) | (m == NEG_INF)
    x = tl.where(invalid[:, None], NEG_INF, x)
    m = tl.where(invalid, 0.0, m)
    first = tl.argmax(x, axis=1)
    # -- 2. coarse cut
    cut_x = tl.full([BLOCK_R], NEG_INF, tl.float32)
    cut_w = tl.zeros([BLOCK_R], dtype=tl.float32)
    lower = tl.full([BLOCK_R], NEG_INF, tl.float32)
    found = invalid
    if USE_TOPK:
        xlo = tl.min(tl.where(x > NEG_INF, x, m[:, None]), axis=1)
        span = m - xlo
        for j in range(1, RADIX):
            v = m - span * (j / RADIX)
            take = ~found & (tl.sum((x >= v[:, None]).to(tl.int32), axis=1) >= top_k)
            cut_x = tl.where(take, v, cut_x)
            found = found | take
    elif USE_TOPP:
        w = exp_weight(_scaled(x, m, inv_t, m * 0.0))
        need = tl.full([BLOCK_R], top_p, tl.float32).to(tl.float64) * tl.sum(w.to(tl.float64), axis=1) * TOPP_SLACK
        v = tl.full([BLOCK_R], 1.0, tl.float32)
        for _j in range(1, RADIX):
            v = v * 0.5
            w = exp_weight(_scaled(x, m, inv_t, v * 0.0))
            take = ~found & (tl.sum(tl.where(w > v[:, None], w.to(tl.float64), 0.0), axis=1) >= need)
            cut_w = tl.where(take, v, cut_w)
            found = found | take
    elif not GREEDY:
        lower = -_gumbel(seed, first, row_id, offset)
    n_cand = tl.sum(_candidates(x, m, inv_t, cut_x, cut_w, lower, m * 0.0, USE_TOPP and not USE_TOPK).to(tl.int32),
                    axis=1)
    fits = tl.max(n_cand, axis=0) <= SLOTS
    parts = _eighths(x, BLOCK_R, BLOCK_V)  # views of the resident row for the steps that walk it in parts
    x_thr = tl.full([BLOCK_R], NEG_INF, tl.float32)  # kept: x >= x_thr and w >= w_thr
    w_thr = tl.zeros([BLOCK_R], dtype=tl.float32)
    if fits:
        # -- 3a. compact the candidates (id order); decide and draw among them
        zero = n_cand.to(tl.float32) * 0.0
        slot_base = rows.to(tl.int64) * SLOTS
        # an eighth of the row at a time: the ranks of only an eighth of the elements are held
        filled = tl.zeros([BLOCK_R], dtype=tl.int32)
        for q in tl.static_range(8):
            filled = _compact_part(parts[q], q, filled, m, inv_t, cut_x, cut_w, lower, slot_x_ptr, slot_col_ptr,
                                   slot_base, USE_TOPP and not USE_TOPK, BLOCK_V // 8)
        tl.debug_barrier()
        slots = tl.arange(0, SLOTS)
        have = slots[None, :] < n_cand[:, None]
        xc = tl.load(slot_x_ptr + slot_base[:, None] + slots[None, :], mask=have, other=NEG_INF)
        keep = have
        if USE_TOPK:
            larger = tl.zeros([BLOCK_R, SLOTS], dtype=tl.int32)
            for c in tl.static_range(0, SLOTS, PAIR_CHUNK):
                other = c + tl.arange(0, PAIR_CHUNK)
                xo = tl.load(slot_x_ptr + slot_base[:, None] + other[None, :],
                             mask=other[None, :] < n_cand[:, None], other=NEG_INF)
                larger += tl.sum((xo[:, None, :] > xc[:, :, None]).to(tl.int32), axis=2)
            keep = keep & (larger < top_k)
            x_thr = tl.min(tl.where(keep, xc, float("inf")), axis=1)
        sc = (xc - m[:, None]) * inv_t
        wc = exp_weight(sc)
        if USE_TOPP:
            w_all = exp_weight(_scaled(x, m, inv_t, zero))
            z_k = tl.sum(tl.where(x >= x_thr[:, None], w_all, 0.0).to(tl.float64), axis=1)
            wk = tl.where(keep, wc, 0.0)
            above = tl.zeros([BLOCK_R, SLOTS], dtype=tl.float64)
            for c in tl.static_range(0, SLOTS, PAIR_CHUNK):
                other = c + tl.arange(0, PAIR_CHUNK)
                xo = tl.load(slot_x_ptr + slot_base[:, None] + other[None, :],
                             mask=other[None, :] < n_cand[:, None], other=NEG_INF)
                wo = tl.where(xo >= x_thr[:, None], exp_weight((xo - m[:, None]) * inv_t), 0.0)
                bigger = wo[:, None, :] > wk[:, :, None]
                above += tl.sum(tl.where(bigger, wo[:, None, :].to(tl.float64), 0.0), axis=2)
            keep = keep & (above < (tl.full([BLOCK_R], top_p, tl.float32).to(tl.float64) * z_k)[:, None])
            w_thr = tl.min(tl.where(keep, wc, float("inf")), axis=1)
        cc = tl.load(slot_col_ptr + slot_base[:, None] + slots[None, :], mask=have, other=0)
        if GREEDY:
            token = first.to(tl.int32)
            w_tok = tl.sum(tl.where(cc == first[:, None], wc, 0.0), axis=1)
        else:
            score_c = tl.where(keep, sc - _gumbel(seed, cc, row_id[:, None], offset), NEG_INF)
            pick = tl.argmax(score_c, axis=1)
            at = slots[None, :] == pick[:, None]
            token = tl.sum(tl.where(at, cc, 0), axis=1)
            w_tok = tl.sum(tl.where(at, wc, 0.0), axis=1)
    else:
        # -- 3b. many candidates: bisection on the resident row
        if USE_TOPK:
            key_lo = float_key(tl.min(x, axis=1))
            x_thr = _kth_largest(x, top_k, key_lo, tl.where(invalid, key_lo, float_key(m)))
        if USE_TOPP:
            zero = n_cand.to(tl.float32) * 0.0
            w = tl.where(x >= x_thr[:, None], exp_weight(_scaled(x, m, inv_t, zero)), 0.0)
            need = tl.full([BLOCK_R], top_p, tl.float32).to(tl.float64) * tl.sum(w.to(tl.float64), axis=1)
            lo = float_key(tl.min(tl.where(w > 0.0, w, 1.0), axis=1))
            hi = float_key(tl.max(w, axis=1))
            w_thr = _topp_threshold(x, m, inv_t, x_thr, need, tl.where(invalid, hi, lo), hi)
        if GREEDY:
            token = first.to(tl.int32)
            w = exp_weight(_scaled(x, m, inv_t, n_cand.to(tl.float32) * 0.0))
            w_tok = tl.sum(tl.where(cols[None, :] == token[:, None], w, 0.0), axis=1)
        else:
            # the draw an eighth of the row at a time, so that the noise of only an eighth of the
            # elements is in flight
            best = tl.full([BLOCK_R], NEG_INF, tl.float32)
            token = tl.full([BLOCK_R], -1, tl.int32)
            w_tok = tl.zeros([BLOCK_R], dtype=tl.float32)
            for q in tl.static_range(8):
                best, token, w_tok = _draw_part(parts[q], q, best, token, w_tok, m, inv_t, x_thr, w_thr, seed,
                                                row_id, offset, BLOCK_V // 8)
    # -- 4. float64 sums over the kept set of the resident row
    s = _scaled(x, m, inv_t, w_tok * 0.0)
    w = exp_weight(s)
    w = tl.where((x >= x_thr[:, None]) & (w >= w_thr[:, None]), w, 0.0)
    z = tl.sum(w.to(tl.float64), axis=1)
    ws = tl.zeros([BLOCK_R], dtype=tl.float64)
    if WITH_ENTROPY:
        ws = tl.sum(tl.where(w > 0.0, w.to(tl.float64) * s.to(tl.float64), 0.0), axis=1)
    w_top = tl.zeros([BLOCK_R], dtype=tl.float32)
    second = tl.zeros([BLOCK_R], dtype=tl.float32)
    if WITH_MARGIN:
        at_first = cols[None, :] == first[:, None]
        w_top = tl.sum(tl.where(at_first, w, 0.0), axis=1)
        second = tl.max(tl.where(at_first, 0.0, w), axis=1)
    _store_outputs(out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr, rows, in_rows, active, is_masked,
                   current, invalid, token, w_tok, w_top, second, z, ws, WITH_ENTROPY, WITH_MARGIN)


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _sample_kernel(
    logits_ptr, stride_row, ids_ptr, prob_ptr, banned_ptr, row_index_ptr, rng_ptr,
    out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr,
    n_rows, vocab, mask_id, inv_t, top_k, top_p,
    HAS_IDS: tl.constexpr, GREEDY: tl.constexpr, USE_TOPK: tl.constexpr, USE_TOPP: tl.constexpr,
    WITH_ENTROPY: tl.constexpr, WITH_MARGIN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """The streamed kernel: rows of any length, swept in ``BLOCK_V`` blocks, one sweep per step
    (range and argmax; one per top-k bisection step; weight range and normaliser, then one per
    top-p bisection step; the final draw and sums)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    in_rows = rows < n_rows
    seed, offset, row_id, current, is_masked, active = _reveal(
        rng_ptr, row_index_ptr, ids_ptr, prob_ptr, rows, in_rows, mask_id, HAS_IDS
    )
    row_off = rows.to(tl.int64) * stride_row
    # a program whose rows are all kept as they are runs no pass at all
    n_cols = tl.where(tl.max(active.to(tl.int32), axis=0) > 0, vocab, 0)
    lanes = tl.arange(0, BLOCK_V)
    # pass 1: NaN / +inf, maximum and first argmax, key range
    bad = tl.zeros([BLOCK_R], dtype=tl.int32)
    m = tl.full([BLOCK_R], NEG_INF, tl.float32)
    first = tl.zeros([BLOCK_R], dtype=tl.int32)
    kmin = tl.full([BLOCK_R], INT32_MAX, tl.int32)
    kmax = tl.full([BLOCK_R], INT32_MIN, tl.int32)
    for start in range(0, n_cols, BLOCK_V):
        x = _load_logits(logits_ptr, row_off, active, banned_ptr, start + lanes, vocab)
        bad += tl.sum(((x != x) | (x == float("inf"))).to(tl.int32), axis=1)
        x = tl.where(x == x, x, NEG_INF)
        block_max = tl.max(x, axis=1)
        first = tl.where(block_max > m, start + tl.argmax(x, axis=1), first)
        m = tl.maximum(m, block_max)
        key = tl.where(start + lanes[None, :] < vocab, float_key(x), INT32_MAX)
        kmin = tl.minimum(kmin, tl.min(key, axis=1))
        kmax = tl.maximum(kmax, tl.max(tl.where(start + lanes[None, :] < vocab, key, INT32_MIN), axis=1))
    invalid = (bad > 0) | (m == NEG_INF)
    m = tl.where(invalid, 0.0, m)
    live_rows = active & ~invalid
    kthr = tl.full([BLOCK_R], INT32_MIN, tl.int32)  # kept: key(x) >= kthr and key(w) >= wthr
    wthr = tl.full([BLOCK_R], INT32_MIN, tl.int32)
    if USE_TOPK:
        lo = kmin
        hi = tl.where(live_rows, kmax, kmin)
        steps = 0
        while (tl.max((lo < hi).to(tl.int32), axis=0) > 0) & (steps < MAX_SEARCH_STEPS):
            live = lo < hi
            pivot = (lo.to(tl.int64) + ((hi.to(tl.int64) - lo.to(tl.int64) + 1) >> 1)).to(tl.int32)
            count = tl.zeros([BLOCK_R], dtype=tl.int32)
            above = tl.full([BLOCK_R], INT32_MAX, tl.int32)
            below = tl.full([BLOCK_R], INT32_MIN, tl.int32)
            for start in range(0, n_cols, BLOCK_V):
                inb = start + lanes[None, :] < vocab
                x = _load_logits(logits_ptr, row_off, active & live, banned_ptr, start + lanes, vocab)
                key = float_key(x)
                ge = inb & (key >= pivot[:, None])
                count += tl.sum(ge.to(tl.int32), axis=1)
                above = tl.minimum(above, tl.min(tl.where(ge, key, INT32_MAX), axis=1))
                below = tl.maximum(below, tl.max(tl.where(inb & ~ge, key, INT32_MIN), axis=1))
            enough = count >= top_k
            lo = tl.where(live & enough, above, lo)
            hi = tl.where(live, tl.where(enough, tl.where(count == top_k, above, hi), below), hi)
            steps += 1
        kthr = lo
    if USE_TOPP:
        z_k = tl.zeros([BLOCK_R], dtype=tl.float64)
        wmin = tl.full([BLOCK_R], INT32_MAX, tl.int32)
        wmax = tl.full([BLOCK_R], INT32_MIN, tl.int32)
        for start in range(0, n_cols, BLOCK_V):
            x = _load_logits(logits_ptr, row_off, live_rows, banned_ptr, start + lanes, vocab)
            w = tl.where(float_key(x) >= kthr[:, None], exp_weight((x - m[:, None]) * inv_t), 0.0)
            z_k += tl.sum(w.to(tl.float64), axis=1)
            wkey = float_key(w)
            wmin = tl.minimum(wmin, tl.min(tl.where(w > 0.0, wkey, INT32_MAX), axis=1))
            wmax = tl.maximum(wmax, tl.max(wkey, axis=1))
        need = tl.full([BLOCK_R], top_p, tl.float32).to(tl.float64) * z_k
        lo = tl.where(live_rows, wmin, wmax)
        hi = wmax
        steps = 0
        while (tl.max((lo < hi).to(tl.int32), axis=0) > 0) & (steps < MAX_SEARCH_STEPS):
            live = lo < hi
            pivot = (lo.to(tl.int64) + ((hi.to(tl.int64) - lo.to(tl.int64)) >> 1)).to(tl.int32)
            mass = tl.zeros([BLOCK_R], dtype=tl.float64)
            above = tl.full([BLOCK_R], INT32_MAX, tl.int32)
            below = tl.full([BLOCK_R], INT32_MIN, tl.int32)
            for start in range(0, n_cols, BLOCK_V):
                x = _load_logits(logits_ptr, row_off, live_rows & live, banned_ptr, start + lanes, vocab)
                w = tl.where(float_key(x) >= kthr[:, None], exp_weight((x - m[:, None]) * inv_t), 0.0)
                wkey = float_key(w)
                gt = wkey > pivot[:, None]
                mass += tl.sum(tl.where(gt, w.to(tl.float64), 0.0), axis=1)
                above = tl.minimum(above, tl.min(tl.where(gt, wkey, INT32_MAX), axis=1))
                below = tl.maximum(below, tl.max(tl.where(gt, INT32_MIN, wkey), axis=1))
            small = mass < need
            lo = tl.where(live & ~small, above, lo)
            hi = tl.where(live & small, below, hi)
            steps += 1
        wthr = lo
    # final pass: the draw and the float64 sums over the kept set
    z = tl.zeros([BLOCK_R], dtype=tl.float64)
    ws = tl.zeros([BLOCK_R], dtype=tl.float64)
    best = tl.full([BLOCK_R], NEG_INF, tl.float32)
    token = first
    w_tok = tl.zeros([BLOCK_R], dtype=tl.float32)
    w_top = tl.zeros([BLOCK_R], dtype=tl.float32)
    second = tl.zeros([BLOCK_R], dtype=tl.float32)
    for start in range(0, n_cols, BLOCK_V):
        cols = start + lanes
        x = _load_logits(logits_ptr, row_off, live_rows, banned_ptr, cols, vocab)
        s = (x - m[:, None]) * inv_t
        w = exp_weight(s)
        kept = (float_key(x) >= kthr[:, None]) & (float_key(w) >= wthr[:, None]) & (x > NEG_INF)
        w = tl.where(kept, w, 0.0)
        z += tl.sum(w.to(tl.float64), axis=1)
        if WITH_ENTROPY:
            ws += tl.sum(tl.where(w > 0.0, w.to(tl.float64) * s.to(tl.float64), 0.0), axis=1)
        at_first = cols[None, :] == first[:, None]
        if WITH_MARGIN:
            w_top += tl.sum(tl.where(at_first, w, 0.0), axis=1)
            second = tl.maximum(second, tl.max(tl.where(at_first, 0.0, w), axis=1))
        if GREEDY:
            w_tok += tl.sum(tl.where(at_first, w, 0.0), axis=1)
        else:
            score = tl.where(kept, s - _gumbel(seed, cols[None, :], row_id[:, None], offset), NEG_INF)
            block_best = tl.max(score, axis=1)
            block_arg = tl.argmax(score, axis=1)
            better = block_best > best
            best = tl.where(better, block_best, best)
            token = tl.where(better, start + block_arg, token)
            w_tok = tl.where(better, tl.sum(tl.where(lanes[None, :] == block_arg[:, None], w, 0.0), axis=1), w_tok)
    _store_outputs(out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr, rows, in_rows, active, is_masked,
                   current, invalid, token, w_tok, w_top, second, z, ws, WITH_ENTROPY, WITH_MARGIN)


def resident_block(vocab: int, dtype: torch.dtype) -> int:
    """The block of the resident kernel for rows of ``vocab`` logits of ``dtype``; 0: too long."""
    block = block_size(vocab, 1 << 30)
    return block if block <= RESIDENT_MAX_BLOCK[4 if dtype == torch.float32 else 2] else 0


def launch_sample(
    logits: torch.Tensor,
    ids: torch.Tensor | None,
    unmask_prob: torch.Tensor,
    banned: torch.Tensor,
    row_index: torch.Tensor,
    rng: torch.Tensor,
    mask_id: int,
    inv_temperature: float,
    greedy: bool,
    top_k: int,
    top_p: float,
    with_entropy: bool,
    with_margin: bool,
    resident: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch a sampling kernel; returns (tokens [R] int64, confidence [R], entropy, margin).

    ``inv_temperature`` is ``1 / T`` (1 when greedy), rounded to float32 by the kernel like the
    reference's ``torch.tensor(1 / T, dtype=float32)``; ``top_k <= 0`` or ``>= V`` disables top-k,
    ``top_p >= 1`` disables top-p; ``entropy`` and ``margin`` are ``[R]`` float32 when asked for,
    else empty. ``resident`` picks the kernel (None: the resident one whenever the row fits, see
    :func:`resident_block`).
    """
    n_rows, vocab = logits.shape
    device = logits.device
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    tokens, conf, entropy, margin = empty_sample_outputs(logits, with_entropy, with_margin)
    if n_rows == 0:
        return tokens, conf, entropy, margin
    use_topk = 0 < top_k < vocab
    use_topp = top_p < 1.0
    block = resident_block(vocab, logits.dtype)
    common = (
        tokens if ids is None else ids.contiguous(), unmask_prob.contiguous(),
        banned.contiguous().view(torch.int8), row_index.contiguous(), rng,
        tokens, conf, entropy if with_entropy else conf, margin if with_margin else conf,
    )
    flags = dict(HAS_IDS=ids is not None, GREEDY=greedy, USE_TOPK=use_topk, USE_TOPP=use_topp,
                 WITH_ENTROPY=with_entropy, WITH_MARGIN=with_margin)
    scalars = (n_rows, vocab, mask_id, inv_temperature, top_k if use_topk else 0, top_p)
    if block and resident is not False:
        if INTERPRETED:
            block_r = max(1, min(triton.next_power_of_2(n_rows), (1 << 15) // block, 16))
            num_warps = 4
        else:
            block_r, num_warps = 1, resident_warps(block)
        slot_x = torch.empty(n_rows, COMPACT_SLOTS, dtype=torch.float32, device=device)
        slot_col = torch.empty(n_rows, COMPACT_SLOTS, dtype=torch.int32, device=device)
        _sample_resident_kernel[(triton.cdiv(n_rows, block_r),)](
            logits, logits.stride(0), *common, slot_x, slot_col, *scalars, **flags,
            BLOCK_R=block_r, BLOCK_V=block, SLOTS=COMPACT_SLOTS, num_warps=num_warps, **LAUNCH_OPTIONS,
        )
        return tokens, conf, entropy, margin
    if INTERPRETED:  # many rows per program: the interpreter's cost is per operation
        block_v = block_size(vocab, 4096)
        block_r = max(1, min(triton.next_power_of_2(n_rows), (1 << 16) // block_v))
        num_warps = 4
    else:
        block_v, block_r, num_warps = block_size(vocab, 2048), 1, 8
    _sample_kernel[(triton.cdiv(n_rows, block_r),)](
        logits, logits.stride(0), *common, *scalars, **flags,
        BLOCK_R=block_r, BLOCK_V=block_v, num_warps=num_warps, **LAUNCH_OPTIONS,
    )
    return tokens, conf, entropy, margin


def resident_warps(block: int) -> int:
    """Warps per program of the resident kernel on a GPU: 32 logits per thread, 4 to 32 warps."""
    return max(4, min(32, block // (32 * 32)))


#: The launcher as the ``torch.library`` op ``dbert_kernels::triton_sample`` (``torch.compile``
#: traces the fake below instead of the launch).
triton_sample = torch.library.custom_op("dbert_kernels::triton_sample", mutates_args=())(launch_sample)


@triton_sample.register_fake
def _(logits, ids, unmask_prob, banned, row_index, rng, mask_id, inv_temperature, greedy, top_k, top_p,
      with_entropy, with_margin, resident=None):
    return empty_sample_outputs(logits, with_entropy, with_margin)
