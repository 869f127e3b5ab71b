"""Fused categorical sampling with the absorbing posterior step.

Each program handles ``BLOCK_R`` rows of logits (1 on a GPU, where a row of V ~ 30k is swept in
``BLOCK_V`` chunks; many under the interpreter, whose cost is per operation, not per element).
Per row ``r`` (see :func:`dbert_kernels.reference.sample` for the semantics):

1. the absorbing decision ``uniform(philox(0, row_index[r], STREAM_UNMASK, offset)) < p[r]``;
   rows that are unmasked already, or masked and not revealed, read no logits at all (their
   loads are masked off);
2. top-k without sorting: bisection over the order-preserving int32 keys of the logits, each
   step one counting pass over the row; the pivot snaps to actual values, so it ends after at
   most ``min(32, #distinct values)`` passes (earlier when a pivot counts exactly ``k``);
3. top-p without sorting: the same search over the scaled logits, with mass passes
   (``sum exp(s - max)`` over tokens strictly above the pivot) instead of counts;
4. a final pass: online log-sum-exp over the kept set, Gumbel-max (``s + (-log E)`` with the
   Philox Exp(1) variate of ``(vocab id, row_index[r], STREAM_SAMPLE, offset)``) or greedy
   argmax (ties to the lower id), the token's probability and optionally the entropy.

Invalid rows (NaN or +inf among the allowed logits, or no finite allowed logit), which the public
op rejects when ``validate=True``: the kernel writes token ``-1``, confidence NaN and entropy NaN,
and never reads outside the row.

The custom op ``torch.ops.dbert_kernels.triton_sample`` (with a fake implementation for shape
propagation) wraps the launcher; its Philox key and offset are a tensor, so that a sampling step
can be compiled or captured in a CUDA graph without a host synchronisation.
"""

# No ``from __future__ import annotations``: torch.library reads the annotations at runtime.

import torch
import triton
import triton.language as tl

from .. import random as rnd
from .launch import INTERPRETED, LAUNCH_OPTIONS, block_size
from .noise import (
    INT32_MAX,
    INT32_MIN,
    MAX_SEARCH_STEPS,
    exponential_from_bits,
    float_key,
    philox_block,
    uniform_from_bits,
)

STREAM_SAMPLE = tl.constexpr(rnd.STREAM_SAMPLE)
STREAM_UNMASK = tl.constexpr(rnd.STREAM_UNMASK)
NEG_INF = tl.constexpr(float("-inf"))


@triton.jit
def _load_block(logits_ptr, row_off, active, banned_ptr, cols, vocab, inv_t):
    """Float32 logits ``x`` [BLOCK_R, BLOCK_V] (-inf where not read), ``s = x * inv_t``, allowed."""
    inb = cols < vocab
    allowed = active[:, None] & (inb & (tl.load(banned_ptr + cols, mask=inb, other=1) == 0))[None, :]
    x = tl.load(logits_ptr + row_off[:, None] + cols[None, :], mask=allowed, other=NEG_INF).to(tl.float32)
    return x, x * inv_t, allowed


@triton.jit
def _store_outputs(out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr, rows, in_rows, active, is_masked,
                   invalid, token, conf, ent, margin, WITH_ENTROPY: tl.constexpr, WITH_MARGIN: tl.constexpr):
    """Store the outputs of a block of rows (rows not read: entropy 0 / margin 1 when unmasked on
    entry, NaN when masked and not revealed; invalid rows: NaN)."""
    nan = float("nan")
    tl.store(out_tok_ptr + rows, token, mask=in_rows)
    tl.store(out_conf_ptr + rows, conf, mask=in_rows)
    if WITH_ENTROPY:
        ent = tl.where(active, tl.where(invalid, nan, ent), tl.where(is_masked, nan, 0.0))
        tl.store(out_ent_ptr + rows, ent, mask=in_rows)
    if WITH_MARGIN:
        margin = tl.where(active, tl.where(invalid, nan, margin), tl.where(is_masked, nan, 1.0))
        tl.store(out_margin_ptr + rows, margin, mask=in_rows)


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
def _sample_kernel(
    logits_ptr, stride_row, ids_ptr, prob_ptr, banned_ptr, row_index_ptr, rng_ptr,
    out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr,
    n_rows, vocab, mask_id, inv_t, top_k, top_p,
    HAS_IDS: tl.constexpr, GREEDY: tl.constexpr, USE_TOPK: tl.constexpr, USE_TOPP: tl.constexpr,
    FILTERED: tl.constexpr, WITH_ENTROPY: tl.constexpr, WITH_MARGIN: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    in_rows = rows < n_rows
    seed, offset, row_id, current, is_masked, active = _reveal(
        rng_ptr, row_index_ptr, ids_ptr, prob_ptr, rows, in_rows, mask_id, HAS_IDS
    )
    row_off = rows.to(tl.int64) * stride_row
    # a program whose rows are all kept as they are runs no pass at all (no noise computed either)
    n_cols = tl.where(tl.max(active.to(tl.int32), axis=0) > 0, vocab, 0)
    lanes = tl.arange(0, BLOCK_V)
    bad = tl.zeros([BLOCK_R], dtype=tl.int32)
    x_thr = tl.full([BLOCK_R], INT32_MIN, tl.int32)  # keep x with float_key(x) >= x_thr
    s_thr = tl.full([BLOCK_R], INT32_MIN, tl.int32)  # keep s with float_key(s) >= s_thr
    if FILTERED:
        # pass 1: key range and count of the allowed logits, NaN / +inf detection
        kmin = tl.full([BLOCK_R], INT32_MAX, tl.int32)
        kmax = tl.full([BLOCK_R], INT32_MIN, tl.int32)
        n_allowed = tl.zeros([BLOCK_R], dtype=tl.int32)
        for start in range(0, n_cols, BLOCK_V):
            x, s, allowed = _load_block(logits_ptr, row_off, active, banned_ptr, start + lanes, vocab, inv_t)
            bad += tl.sum((allowed & ((x != x) | (x == float("inf")))).to(tl.int32), axis=1)
            ok = allowed & (x == x)
            key = float_key(x)
            kmin = tl.minimum(kmin, tl.min(tl.where(ok, key, INT32_MAX), axis=1))
            kmax = tl.maximum(kmax, tl.max(tl.where(ok, key, INT32_MIN), axis=1))
            n_allowed += tl.sum(ok.to(tl.int32), axis=1)
        if USE_TOPK:
            # k-th largest allowed x: the largest value v with #(x >= v) >= top_k
            filtered = (bad == 0) & (n_allowed > top_k)
            lo = kmin
            hi = tl.where(filtered, kmax, kmin)
            steps = 0
            while (tl.max((lo < hi).to(tl.int32), axis=0) > 0) & (steps < MAX_SEARCH_STEPS):
                live = lo < hi
                pivot = (lo.to(tl.int64) + ((hi.to(tl.int64) - lo.to(tl.int64) + 1) >> 1)).to(tl.int32)
                count = tl.zeros([BLOCK_R], dtype=tl.int32)
                above = tl.full([BLOCK_R], INT32_MAX, tl.int32)  # smallest key >= pivot
                below = tl.full([BLOCK_R], INT32_MIN, tl.int32)  # largest key < pivot
                for start in range(0, n_cols, BLOCK_V):
                    x, s, allowed = _load_block(
                        logits_ptr, row_off, active & live, banned_ptr, start + lanes, vocab, inv_t
                    )
                    key = float_key(x)
                    ge = allowed & (key >= pivot[:, None])
                    count += tl.sum(ge.to(tl.int32), axis=1)
                    above = tl.minimum(above, tl.min(tl.where(ge, key, INT32_MAX), axis=1))
                    lt = allowed & (key < pivot[:, None])
                    below = tl.maximum(below, tl.max(tl.where(lt, key, INT32_MIN), axis=1))
                enough = count >= top_k
                lo = tl.where(live & enough, above, lo)
                hi = tl.where(live, tl.where(enough, tl.where(count == top_k, above, hi), below), hi)
                steps += 1
            x_thr = tl.where(filtered, lo, INT32_MIN)
        if USE_TOPP:
            # max, normaliser and key range of the scaled logits over the top-k set
            m = tl.full([BLOCK_R], NEG_INF, tl.float32)
            smin = tl.full([BLOCK_R], INT32_MAX, tl.int32)
            smax = tl.full([BLOCK_R], INT32_MIN, tl.int32)
            for start in range(0, n_cols, BLOCK_V):
                x, s, allowed = _load_block(logits_ptr, row_off, active, banned_ptr, start + lanes, vocab, inv_t)
                kept = allowed & (x == x) & (float_key(x) >= x_thr[:, None])
                key = float_key(s)
                m = tl.maximum(m, tl.max(tl.where(kept, s, NEG_INF), axis=1))
                smin = tl.minimum(smin, tl.min(tl.where(kept, key, INT32_MAX), axis=1))
                smax = tl.maximum(smax, tl.max(tl.where(kept, key, INT32_MIN), axis=1))
            searched = (bad == 0) & (m > NEG_INF)
            m_safe = tl.where(searched, m, 0.0)
            z = tl.zeros([BLOCK_R], dtype=tl.float32)
            for start in range(0, n_cols, BLOCK_V):
                x, s, allowed = _load_block(
                    logits_ptr, row_off, active & searched, banned_ptr, start + lanes, vocab, inv_t
                )
                kept = allowed & (float_key(x) >= x_thr[:, None])
                z += tl.sum(tl.where(kept, tl.exp(s - m_safe[:, None]), 0.0), axis=1)
            z = tl.where(searched, z, 1.0)
            # smallest value s* whose strictly-larger mass is below top_p: keep s >= s*
            lo = smin
            hi = tl.where(searched, smax, smin)
            steps = 0
            while (tl.max((lo < hi).to(tl.int32), axis=0) > 0) & (steps < MAX_SEARCH_STEPS):
                live = lo < hi
                pivot = (lo.to(tl.int64) + ((hi.to(tl.int64) - lo.to(tl.int64)) >> 1)).to(tl.int32)
                mass = tl.zeros([BLOCK_R], dtype=tl.float32)
                above = tl.full([BLOCK_R], INT32_MAX, tl.int32)  # smallest key > pivot
                below = tl.full([BLOCK_R], INT32_MIN, tl.int32)  # largest key <= pivot
                for start in range(0, n_cols, BLOCK_V):
                    x, s, allowed = _load_block(
                        logits_ptr, row_off, active & live, banned_ptr, start + lanes, vocab, inv_t
                    )
                    kept = allowed & (float_key(x) >= x_thr[:, None])
                    key = float_key(s)
                    gt = kept & (key > pivot[:, None])
                    mass += tl.sum(tl.where(gt, tl.exp(s - m_safe[:, None]), 0.0), axis=1)
                    above = tl.minimum(above, tl.min(tl.where(gt, key, INT32_MAX), axis=1))
                    le = kept & (key <= pivot[:, None])
                    below = tl.maximum(below, tl.max(tl.where(le, key, INT32_MIN), axis=1))
                small = (mass / z) < top_p
                lo = tl.where(live & ~small, above, lo)
                hi = tl.where(live & small, below, hi)
                steps += 1
            s_thr = lo
    # final pass: log-sum-exp, the draw and the token's score over the kept set
    run_max = tl.full([BLOCK_R], NEG_INF, tl.float32)
    run_sum = tl.zeros([BLOCK_R], dtype=tl.float32)
    run_xs = tl.zeros([BLOCK_R], dtype=tl.float32)  # sum exp(s - run_max) * s, for the entropy
    best = tl.full([BLOCK_R], NEG_INF, tl.float32)
    best_tok = tl.full([BLOCK_R], -1, tl.int32)
    best_s = tl.full([BLOCK_R], NEG_INF, tl.float32)
    top2 = tl.full([BLOCK_R], NEG_INF, tl.float32)  # second largest kept s (one copy of the largest removed)
    for start in range(0, n_cols, BLOCK_V):
        cols = start + lanes
        x, s, allowed = _load_block(logits_ptr, row_off, active, banned_ptr, cols, vocab, inv_t)
        if not FILTERED:
            bad += tl.sum((allowed & ((x != x) | (x == float("inf")))).to(tl.int32), axis=1)
        kept = allowed & (x == x) & (float_key(x) >= x_thr[:, None]) & (float_key(s) >= s_thr[:, None])
        s_kept = tl.where(kept, s, NEG_INF)
        new_max = tl.maximum(run_max, tl.max(s_kept, axis=1))
        safe_max = tl.where(new_max == NEG_INF, 0.0, new_max)
        scale = tl.where(run_max == NEG_INF, 0.0, tl.exp(run_max - safe_max))
        e = tl.where(kept, tl.exp(s_kept - safe_max[:, None]), 0.0)
        run_sum = run_sum * scale + tl.sum(e, axis=1)
        if WITH_ENTROPY:
            run_xs = run_xs * scale + tl.sum(tl.where(e > 0.0, e * s_kept, 0.0), axis=1)
        if WITH_MARGIN:
            block_top = tl.argmax(s_kept, axis=1)
            block_2 = tl.max(tl.where(lanes[None, :] == block_top[:, None], NEG_INF, s_kept), axis=1)
            top2 = tl.maximum(tl.minimum(run_max, tl.max(s_kept, axis=1)), tl.maximum(top2, block_2))
        run_max = new_max
        if GREEDY:
            score = s_kept
        else:
            hi_w, lo_w, g_w2, g_w3 = philox_block(seed, cols[None, :], row_id[:, None], STREAM_SAMPLE, offset)
            score = tl.where(kept, s_kept + (-tl.log(exponential_from_bits(hi_w, lo_w))), NEG_INF)
        block_best = tl.max(score, axis=1)
        block_arg = tl.argmax(score, axis=1)
        block_s = tl.sum(tl.where(lanes[None, :] == block_arg[:, None], s_kept, 0.0), axis=1)
        better = block_best > best
        best = tl.where(better, block_best, best)
        best_tok = tl.where(better, start + block_arg, best_tok)
        best_s = tl.where(better, block_s, best_s)
    log_z = run_max + tl.log(tl.where(run_sum > 0.0, run_sum, 1.0))
    invalid = (bad > 0) | (run_max == NEG_INF) | (best_tok < 0)
    log_z = tl.where(invalid, 0.0, log_z)  # rows not read: avoid -inf - -inf
    nan = float("nan")
    token = tl.where(active, tl.where(invalid, -1, best_tok.to(tl.int64)), current)
    conf = tl.where(active, tl.where(invalid, nan, tl.exp(best_s - log_z)), tl.where(is_masked, 0.0, 1.0))
    ent = log_z - run_xs / tl.where(run_sum > 0.0, run_sum, 1.0)
    margin = tl.exp(run_max - log_z) - tl.exp(top2 - log_z)
    _store_outputs(out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr, rows, in_rows, active, is_masked,
                   invalid, token, conf, ent, margin, WITH_ENTROPY, WITH_MARGIN)



#: Largest row (power-of-two block) the resident kernel holds, by bytes per logit: 2-byte logits up
#: to 65536, fp32 up to 32768; longer rows use the streamed kernel.
RESIDENT_MAX_BLOCK = {2: 65536, 4: 32768}
#: Slots per row of the candidate buffer of the resident kernel (see its docstring).
COMPACT_SLOTS = 128
#: Number of pivots + 1 of the resident kernel's coarse pass (4 bits of the value range per pass).
RADIX = tl.constexpr(16)
#: Strict upper bound of the Gumbel noise ``-log E`` (E >= 2**-47, so -log E <= 32.58).
GUMBEL_BOUND = tl.constexpr(33.0)
#: Relative slack of the coarse top-p cut (covers the float rounding of the coarse mass sums).
TOPP_SLACK = tl.constexpr(1.0 + 2.0**-10)


@triton.jit
def _gumbel(seed, col, row_id, offset):
    """The Gumbel noise ``-log E`` of (vocabulary id ``col``, Philox row ``row_id``)."""
    hi_w, lo_w, g_w2, g_w3 = philox_block(seed, col, row_id, STREAM_SAMPLE, offset)
    return -tl.log(exponential_from_bits(hi_w, lo_w))


@triton.jit
def _kth_key_bisect(key, ok, top_k, lo, hi):
    """Largest key ``v`` with ``#(key >= v) >= top_k`` among ``ok`` (``lo``/``hi``: its bounds)."""
    steps = 0
    while (tl.max((lo < hi).to(tl.int32), axis=0) > 0) & (steps < MAX_SEARCH_STEPS):
        live = lo < hi
        pivot = (lo.to(tl.int64) + ((hi.to(tl.int64) - lo.to(tl.int64) + 1) >> 1)).to(tl.int32)
        ge = ok & (key >= pivot[:, None])
        count = tl.sum(ge.to(tl.int32), axis=1)
        above = tl.min(tl.where(ge, key, INT32_MAX), axis=1)
        below = tl.max(tl.where(ok & (key < pivot[:, None]), key, INT32_MIN), axis=1)
        enough = count >= top_k
        lo = tl.where(live & enough, above, lo)
        hi = tl.where(live, tl.where(enough, tl.where(count == top_k, above, hi), below), hi)
        steps += 1
    return lo


@triton.jit
def _topp_key_bisect(skey, e, kept, z, top_p, lo, hi):
    """Smallest key ``v`` whose strictly-larger mass ``sum(e[skey > v]) / z`` is below ``top_p``."""
    steps = 0
    while (tl.max((lo < hi).to(tl.int32), axis=0) > 0) & (steps < MAX_SEARCH_STEPS):
        live = lo < hi
        pivot = (lo.to(tl.int64) + ((hi.to(tl.int64) - lo.to(tl.int64)) >> 1)).to(tl.int32)
        gt = kept & (skey > pivot[:, None])
        mass = tl.sum(tl.where(gt, e, 0.0), axis=1)
        above = tl.min(tl.where(gt, skey, INT32_MAX), axis=1)
        below = tl.max(tl.where(kept & (skey <= pivot[:, None]), skey, INT32_MIN), axis=1)
        small = (mass / z) < top_p
        lo = tl.where(live & ~small, above, lo)
        hi = tl.where(live & small, below, hi)
        steps += 1
    return lo


@triton.jit
def _sample_resident_kernel(
    logits_ptr, stride_row, ids_ptr, prob_ptr, banned_ptr, row_index_ptr, rng_ptr,
    out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr, slot_x_ptr, slot_col_ptr,
    n_rows, vocab, mask_id, inv_t, top_k, top_p,
    HAS_IDS: tl.constexpr, GREEDY: tl.constexpr, USE_TOPK: tl.constexpr, USE_TOPP: tl.constexpr,
    WITH_ENTROPY: tl.constexpr, WITH_MARGIN: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, SLOTS: tl.constexpr,
):
    """One read of each revealed row: the row stays in registers and every step runs on that copy.

    1. load the row once (``x``, float32), NaN / +inf check, row maximum;
    2. a coarse cut: a value ``L`` such that every token that top-k / top-p can keep has
       ``x >= L`` (15 pivots across the value range per pass, counts for top-k, masses for top-p;
       without a filter, the Gumbel bound ``s + 33 >= s_max + g(argmax)``: no other token can win);
    3. if every row of the program has at most ``SLOTS`` such candidates (the usual case with top-k
       or top-p), they are compacted (in id order) into a small per-row buffer and top-k / top-p
       are decided exactly by pairwise comparison among them (rank and strictly-larger mass), and
       the Gumbel noise is drawn only for them; otherwise the thresholds are searched on the
       resident row by bisection over the order-preserving keys, and the draw covers the row;
    4. normaliser, confidence, entropy and margin: reductions over the resident row.
    """
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    in_rows = rows < n_rows
    seed, offset, row_id, current, is_masked, active = _reveal(
        rng_ptr, row_index_ptr, ids_ptr, prob_ptr, rows, in_rows, mask_id, HAS_IDS
    )
    cols = tl.arange(0, BLOCK_V)
    inb = cols < vocab
    allowed = active[:, None] & (inb & (tl.load(banned_ptr + cols, mask=inb, other=1) == 0))[None, :]
    row_off = rows.to(tl.int64) * stride_row
    x = tl.load(logits_ptr + row_off[:, None] + cols[None, :], mask=allowed, other=NEG_INF).to(tl.float32)
    bad = tl.sum((allowed & ((x != x) | (x == float("inf")))).to(tl.int32), axis=1)
    ok = allowed & (x == x) & (bad == 0)[:, None]
    xmax = tl.max(tl.where(ok, x, NEG_INF), axis=1)
    invalid = (bad > 0) | (xmax == NEG_INF)
    ok = ok & ~invalid[:, None]
    xmax_safe = tl.where(invalid, 0.0, xmax)
    key = float_key(x)
    s = x * inv_t
    smax = xmax_safe * inv_t
    n_ok = tl.sum(ok.to(tl.int32), axis=1)
    # -- 2. coarse cut: the candidates are the ok tokens with x >= cut (upward closed in x)
    cut = tl.full([BLOCK_R], NEG_INF, tl.float32)
    if USE_TOPK or USE_TOPP:
        xlo = tl.min(tl.where(ok & (x > NEG_INF), x, float("inf")), axis=1)
        xlo = tl.where(xlo < float("inf"), xlo, xmax_safe)
        found = invalid
        if USE_TOPK:
            found = found | (n_ok <= top_k)
            span = xmax_safe - xlo
            for j in tl.static_range(1, RADIX):
                v = xmax_safe - span * (j / RADIX)
                take = ~found & (tl.sum((ok & (x >= v[:, None])).to(tl.int32), axis=1) >= top_k)
                cut = tl.where(take, v, cut)
                found = found | take
            cand = ok & (x >= cut[:, None])
        else:
            e_all = tl.where(ok, tl.exp(s - smax[:, None]), 0.0)
            need = top_p * tl.sum(e_all, axis=1) * TOPP_SLACK
            span = smax - xlo * inv_t
            for j in tl.static_range(1, RADIX):
                v = smax - span * (j / RADIX)
                # every token with s <= v has at least this much mass strictly above it
                take = ~found & (tl.sum(tl.where(s > v[:, None], e_all, 0.0), axis=1) >= need)
                cut = tl.where(take, v, cut)
                found = found | take
            cand = ok & (s > cut[:, None])
    elif GREEDY:
        cand = ok
    else:
        first = tl.argmax(tl.where(ok, x, NEG_INF), axis=1)
        lower = smax + _gumbel(seed, first, row_id, offset)
        cand = ok & (s + GUMBEL_BOUND >= lower[:, None])
    n_cand = tl.sum(cand.to(tl.int32), axis=1)
    fits = tl.max(n_cand, axis=0) <= SLOTS
    x_thr = tl.full([BLOCK_R], INT32_MIN, tl.int32)
    s_thr = tl.full([BLOCK_R], INT32_MIN, tl.int32)
    if fits:
        # -- 3a. compact the candidates (id order) and decide exactly among them
        rank = tl.cumsum(cand.to(tl.int32), axis=1) - 1
        slot_base = rows.to(tl.int64) * SLOTS
        dst = slot_base[:, None] + rank
        tl.store(slot_x_ptr + dst, x, mask=cand)
        tl.store(slot_col_ptr + dst, cols[None, :] + rank * 0, mask=cand)
        tl.debug_barrier()
        slots = tl.arange(0, SLOTS)
        have = slots[None, :] < n_cand[:, None]
        src = slot_base[:, None] + slots[None, :]
        xc = tl.load(slot_x_ptr + src, mask=have, other=NEG_INF)
        cc = tl.load(slot_col_ptr + src, mask=have, other=0)
        kc = float_key(xc)
        keep = have
        if USE_TOPK:
            # kept iff fewer than top_k allowed tokens are strictly larger (all of them are candidates)
            larger = tl.sum((have[:, None, :] & (kc[:, None, :] > kc[:, :, None])).to(tl.int32), axis=2)
            keep = keep & ((larger < top_k) | (n_ok <= top_k)[:, None])
            x_thr = tl.where(n_ok > top_k, tl.min(tl.where(keep, kc, INT32_MAX), axis=1), INT32_MIN)
        sc = xc * inv_t
        if USE_TOPP:
            z_k = tl.sum(tl.where(ok & (key >= x_thr[:, None]), tl.exp(s - smax[:, None]), 0.0), axis=1)
            ec = tl.where(keep, tl.exp(sc - smax[:, None]), 0.0)
            skc = float_key(sc)
            mass = tl.sum(tl.where(skc[:, None, :] > skc[:, :, None], ec[:, None, :], 0.0), axis=2)
            keep = keep & ((mass / tl.where(invalid, 1.0, z_k)[:, None]) < top_p)
            s_thr = tl.min(tl.where(keep, skc, INT32_MAX), axis=1)
        if GREEDY:
            score_c = tl.where(keep, sc, NEG_INF)
        else:
            score_c = tl.where(keep, sc + _gumbel(seed, cc, row_id[:, None], offset), NEG_INF)
        pick = tl.argmax(score_c, axis=1)
        at = slots[None, :] == pick[:, None]
        best_tok = tl.sum(tl.where(at, cc, 0), axis=1)
        best_s = tl.sum(tl.where(at, sc, 0.0), axis=1)
    else:
        # -- 3b. searches on the resident row (many candidates, or greedy without a filter)
        kept = ok
        if USE_TOPK:
            filtered = n_ok > top_k
            kmin = tl.min(tl.where(ok, key, INT32_MAX), axis=1)
            kmax = tl.max(tl.where(ok, key, INT32_MIN), axis=1)
            kth = _kth_key_bisect(key, ok, top_k, kmin, tl.where(filtered, kmax, kmin))
            x_thr = tl.where(filtered, kth, INT32_MIN)
            kept = ok & (key >= x_thr[:, None])
        if USE_TOPP:
            skey = float_key(s)
            e = tl.where(kept, tl.exp(s - smax[:, None]), 0.0)
            z_k = tl.where(invalid, 1.0, tl.sum(e, axis=1))
            smin = tl.min(tl.where(kept, skey, INT32_MAX), axis=1)
            smx = tl.max(tl.where(kept, skey, INT32_MIN), axis=1)
            s_thr = _topp_key_bisect(skey, e, kept, z_k, top_p, smin, tl.where(invalid, smin, smx))
            kept = kept & (skey >= s_thr[:, None])
        s_kept = tl.where(kept, s, NEG_INF)
        if GREEDY:
            score = s_kept
        else:
            score = tl.where(kept, s_kept + _gumbel(seed, cols[None, :], row_id[:, None], offset), NEG_INF)
        pick = tl.argmax(score, axis=1)
        best_tok = pick.to(tl.int32)
        best_s = tl.sum(tl.where(cols[None, :] == pick[:, None], s_kept, 0.0), axis=1)
    # -- 4. normaliser, confidence, entropy, margin over the kept set of the resident row
    kept = ok & (key >= x_thr[:, None]) & (float_key(s) >= s_thr[:, None])
    e = tl.where(kept, tl.exp(s - smax[:, None]), 0.0)
    zsum = tl.sum(e, axis=1)
    zsum = tl.where(zsum > 0.0, zsum, 1.0)
    log_z = smax + tl.log(zsum)
    ent = tl.log(zsum)
    second = tl.full([BLOCK_R], NEG_INF, tl.float32)
    if WITH_MARGIN:
        s_kept = tl.where(kept, s, NEG_INF)
        top = tl.argmax(s_kept, axis=1)
        second = tl.max(tl.where(cols[None, :] == top[:, None], NEG_INF, s_kept), axis=1)
    if WITH_ENTROPY:
        ent = ent - tl.sum(tl.where(e > 0.0, e * (s - smax[:, None]), 0.0), axis=1) / zsum
    invalid = invalid | (best_tok < 0)
    nan = float("nan")
    token = tl.where(active, tl.where(invalid, -1, best_tok.to(tl.int64)), current)
    conf = tl.where(active, tl.where(invalid, nan, tl.exp(best_s - log_z)), tl.where(is_masked, 0.0, 1.0))
    margin = tl.exp(smax - log_z) - tl.exp(second - log_z)
    _store_outputs(out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr, rows, in_rows, active, is_masked,
                   invalid, token, conf, ent, margin, WITH_ENTROPY, WITH_MARGIN)


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
    """Launch a sampling kernel; returns (tokens [R] int64, confidence, entropy, margin).

    ``top_k <= 0`` or ``>= V`` disables top-k, ``top_p >= 1`` disables top-p; ``entropy`` and
    ``margin`` are ``[R]`` float32 when asked for, else empty. ``resident`` picks the kernel
    (None: the resident one whenever the row fits, see :func:`resident_block`).
    """
    n_rows, vocab = logits.shape
    device = logits.device
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    tokens = torch.empty(n_rows, dtype=torch.int64, device=device)
    conf = torch.empty(n_rows, dtype=torch.float32, device=device)
    entropy = torch.empty(n_rows if with_entropy else 0, dtype=torch.float32, device=device)
    margin = torch.empty(n_rows if with_margin else 0, dtype=torch.float32, device=device)
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
            block_r = max(1, min(triton.next_power_of_2(n_rows), (1 << 15) // block))
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
        logits, logits.stride(0), *common, *scalars, **flags, FILTERED=use_topk or use_topp,
        BLOCK_R=block_r, BLOCK_V=block_v, num_warps=num_warps, **LAUNCH_OPTIONS,
    )
    return tokens, conf, entropy, margin


def resident_warps(block: int) -> int:
    """Warps per program of the resident kernel on a GPU: 32 logits per thread, 4 to 32 warps."""
    return max(4, min(32, block // (32 * 32)))


@torch.library.custom_op("dbert_kernels::triton_sample", mutates_args=())
def triton_sample(
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sampling: ``(tokens [R] int64, confidence [R], entropy [R] or [0], margin [R] or [0])``.

    ``inv_temperature`` is ``1 / T`` (1 when greedy), rounded to float32 by the kernel like the
    reference's ``torch.tensor(1 / T, dtype=float32)``; ``top_k <= 0`` and ``top_p >= 1`` are off.
    """
    return launch_sample(
        logits, ids, unmask_prob, banned, row_index, rng, mask_id, inv_temperature, greedy,
        top_k, top_p, with_entropy, with_margin,
    )


@triton_sample.register_fake
def _(logits, ids, unmask_prob, banned, row_index, rng, mask_id, inv_temperature, greedy, top_k, top_p,
      with_entropy, with_margin):
    rows = logits.shape[0]
    return (
        logits.new_empty(rows, dtype=torch.int64),
        logits.new_empty(rows, dtype=torch.float32),
        logits.new_empty(rows if with_entropy else 0, dtype=torch.float32),
        logits.new_empty(rows if with_margin else 0, dtype=torch.float32),
    )
