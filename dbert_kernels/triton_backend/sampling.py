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
row once and runs every step on that copy; the **streamed** kernel sweeps the row in blocks, one
sweep per step. The launcher picks the resident kernel for top-k on rows that fit, the streamed
one otherwise (:func:`picks_resident`). Invalid rows (NaN or +inf among the allowed logits, or no finite allowed
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
#: Parts that each step of the resident kernel walks the row in, one after the other (8 on a GPU:
#: the temporaries of an eighth of a thread's logits are live at a time; 1 under the interpreter,
#: whose cost is per operation; both give the same tokens, the float64 sums differ in rounding).
RESIDENT_PARTS = 1 if INTERPRETED else 8
#: Slots per row of the resident kernel's candidate buffer.
COMPACT_SLOTS = 128
#: Candidates compared at once in the pairwise top-k / top-p decisions (bounds the registers).
PAIR_CHUNK = tl.constexpr(32)
#: Bits of the resident kernel's coarse cut: ``RADIX - 1`` pivots (4 bits of the value range),
#: found by a binary search of ``RADIX_BITS`` passes over the row.
RADIX_BITS = tl.constexpr(4)
RADIX = tl.constexpr(1 << RADIX_BITS.value)
#: Strict upper bound of the Gumbel noise ``-log E`` (``E >= 2**-47``, so ``-log E <= 32.58``).
GUMBEL_BOUND = tl.constexpr(33.0)
#: A lower bound of the positive weights ``exp_weight(s)`` (0 below ``s = -87``).
MIN_WEIGHT = tl.constexpr(2.0**-126)
#: Relative slack of the coarse top-p cut: above the rounding of its float32 mass sums (at most
#: 2**-8 relative for 65536 terms summed in any order).
TOPP_SLACK = tl.constexpr(1.0 + 2.0**-6)
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
    inb = cols[None, :] < vocab
    # the banned table is read through the row offsets clamped to 0: an address whose alignment the
    # compiler cannot tell, like a row's of logits, so that both loads get the same register layout
    # (a 16-byte aligned table would be vectorised and moved to the logits' layout through shared
    # memory: 32 KB and more spills in the resident kernel)
    banned = tl.load(banned_ptr + tl.minimum(row_off, 0)[:, None] + cols[None, :], mask=inb, other=1)
    allowed = active[:, None] & inb & (banned == 0)
    return tl.load(logits_ptr + row_off[:, None] + cols[None, :], mask=allowed, other=NEG_INF).to(tl.float32)


@triton.jit
def _gumbel(seed, col, row_id, offset):
    """``log E`` of (vocabulary id ``col``, Philox row ``row_id``): the score is ``s - log E``."""
    hi_w, lo_w, g_w2, g_w3 = philox_block(seed, col, row_id, STREAM_SAMPLE, offset)
    return tl.log(exponential_from_bits(hi_w, lo_w))


@triton.jit
def _store_outputs(out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr, rows, in_rows, active, is_masked,
                   current, invalid, token, w_tok, second, z, ws, WITH_ENTROPY: tl.constexpr,
                   WITH_MARGIN: tl.constexpr):
    """Store a block of rows' outputs from the float64 sums ``z = sum w`` and ``ws = sum w s``, the
    token's weight ``w_tok`` and the largest kept weight ``second`` besides the first argmax's
    (which is ``exp_weight(0) = 1`` exactly: the margin is ``(1 - second) / z``).

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
        margin = ((1.0 - second.to(tl.float64)) / z_safe).to(tl.float32)
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
def _after(xq, prev):
    """``xq`` (logits or column ids), made to depend on ``prev``: a floating-point lane
    accumulator of the previous part, never NaN (a test the compiler cannot fold, unlike one on
    integers whose range it knows), so that the compiler runs the parts of a step one after the
    other instead of interleaving them, which holds the temporaries of every part at once and
    spills."""
    never = prev != prev
    if xq.dtype == tl.int32:
        return tl.where(never, 0, xq)
    else:
        return tl.where(never, float("nan"), xq)


@triton.jit
def _kth_largest(parts, top_k, lo, hi, PARTS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_Q: tl.constexpr):
    """The largest value ``v`` of the row with ``#(x >= v) >= top_k``, by bisection over the keys
    (``lo``/``hi``: keys bounding it; the lower bound moves to actual values); compares values,
    holds no key array."""
    steps = 0
    while (tl.max((lo < hi).to(tl.int32), axis=0) > 0) & (steps < MAX_SEARCH_STEPS):
        live = lo < hi
        pivot = (lo.to(tl.int64) + ((hi.to(tl.int64) - lo.to(tl.int64) + 1) >> 1)).to(tl.int32)
        v = _key_value(pivot)
        count = tl.zeros([BLOCK_R, BLOCK_Q], dtype=tl.int32)
        above = tl.full([BLOCK_R, BLOCK_Q], float("inf"), tl.float32)
        for q in tl.static_range(PARTS):
            xq = _after(parts[q], above)
            ge = xq >= v[:, None]
            count += ge.to(tl.int32)
            above = tl.minimum(above, tl.where(ge, xq, float("inf")))
        count = tl.sum(count, axis=1)
        above = float_key(tl.min(above, axis=1))
        enough = count >= top_k
        lo = tl.where(live & enough, above, lo)
        hi = tl.where(live, tl.where(enough, tl.where(count == top_k, above, hi), pivot - 1), hi)
        steps += 1
    return _key_value(lo)


@triton.jit
def _topp_threshold(parts, m, inv_t, x_thr, need, lo, hi, PARTS: tl.constexpr, BLOCK_R: tl.constexpr,
                    BLOCK_Q: tl.constexpr):
    """The smallest kept weight: the smallest weight ``v`` whose float64 mass of strictly larger
    weights (of ``x >= x_thr``) is ``< need``, by bisection over the weights' keys (the lower
    bound moves to actual weights)."""
    steps = 0
    while (tl.max((lo < hi).to(tl.int32), axis=0) > 0) & (steps < MAX_SEARCH_STEPS):
        live = lo < hi
        pivot = (lo.to(tl.int64) + ((hi.to(tl.int64) - lo.to(tl.int64)) >> 1)).to(tl.int32)
        v = _key_value(pivot)
        zero = v * 0.0
        mass = tl.zeros([BLOCK_R, BLOCK_Q], dtype=tl.float64)
        above = tl.full([BLOCK_R, BLOCK_Q], float("inf"), tl.float32)
        for q in tl.static_range(PARTS):
            xq = _after(parts[q], mass)
            w = tl.where(xq >= x_thr[:, None], exp_weight(_scaled(xq, m, inv_t, zero)), 0.0)
            gt = w > v[:, None]
            mass += tl.where(gt, w.to(tl.float64), 0.0)
            above = tl.minimum(above, tl.where(gt, w, float("inf")))
        small = tl.sum(mass, axis=1) < need
        lo = tl.where(live & ~small, float_key(tl.min(above, axis=1)), lo)
        hi = tl.where(live & small, pivot, hi)
        steps += 1
    return _key_value(lo)


@triton.jit
def _candidates(x, m, inv_t, cut_x, lower, zero):
    """The candidates of the resident kernel: finite, ``x >= cut_x`` and ``s + 33 >= lower`` (an
    upward-closed set)."""
    s = _scaled(x, m, inv_t, zero)
    return (x >= cut_x[:, None]) & (x > NEG_INF) & (s + GUMBEL_BOUND >= lower[:, None])


@triton.jit
def _halves(x, BLOCK_R: tl.constexpr, N: tl.constexpr):
    """The first and the second half of the columns of ``x`` [BLOCK_R, N]."""
    return tl.split(tl.permute(tl.reshape(x, [BLOCK_R, 2, N // 2]), (0, 2, 1)))


@triton.jit
def _parts(x, BLOCK_R: tl.constexpr, N: tl.constexpr, PARTS: tl.constexpr):
    """The row ``x`` [BLOCK_R, N] as a tuple of ``PARTS`` (a power of two) parts of consecutive
    columns (part ``q``: columns ``q * N / PARTS + i``); each thread's elements of a resident row
    lie in every part, so that the split stays in registers."""
    if PARTS == 1:
        return (x,)
    else:
        first, second = _halves(x, BLOCK_R, N)
        return _parts(first, BLOCK_R, N // 2, PARTS // 2) + _parts(second, BLOCK_R, N // 2, PARTS // 2)


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _sample_resident_kernel(
    logits_ptr, stride_row, ids_ptr, prob_ptr, banned_ptr, row_index_ptr, rng_ptr,
    out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr, slot_x_ptr, slot_col_ptr, slot_n_ptr,
    n_rows, vocab, mask_id, inv_t, top_k, top_p,
    HAS_IDS: tl.constexpr, GREEDY: tl.constexpr, USE_TOPK: tl.constexpr, USE_TOPP: tl.constexpr,
    WITH_ENTROPY: tl.constexpr, WITH_MARGIN: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, SLOTS: tl.constexpr, PARTS: tl.constexpr,
):
    """One read of each revealed row: the row stays in registers and every step runs on it.

    1. load the row once (banned ids read as -inf), NaN / +inf check, maximum ``m``, first argmax;
    2. a coarse cut (15 pivots, 4 bits of the range, found by a binary search in 4 passes over
       the row): the candidates are the finite logits that
       top-k / top-p may keep (top-k: ``x >=`` the largest pivot with ``>= k`` logits above it;
       top-p: weight ``>`` the largest pivot ``2**-j`` with at least ``top_p * Z`` of mass above,
       as a cut on the logits; no filter: the Gumbel bound ``s + 33 >= g(argmax)``, no other token
       can win), an upward-closed set;
    3. at most ``SLOTS`` candidates per row (the usual case with top-k or top-p): each takes a slot
       of a small per-row buffer (an atomic counter hands them out, in no particular order), top-k
       and top-p are decided exactly among them (rank and float64 mass of strictly larger weights,
       compared ``PAIR_CHUNK`` at a time) and the noise is drawn for them only, ties going to the
       lower id; more: bisection over the keys on the resident row;
    4. normaliser, confidence, entropy and margin: float64 sums over the kept set, in the slots
       when top-k or top-p decided there (3, first case), else over the resident row.

    Only ``x`` lives across the steps; scaled logits, weights and keys are recomputed inside each
    step (cheaper than the registers that holding them would cost), and each step walks the row
    in ``PARTS`` parts (8 on a GPU: four logits per thread at a time), one after the other, with
    per-lane accumulators and one reduction across the threads at the end of the step.
    """
    BLOCK_Q: tl.constexpr = BLOCK_V // PARTS
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    in_rows = rows < n_rows
    seed, offset, row_id, current, is_masked, active = _reveal(
        rng_ptr, row_index_ptr, ids_ptr, prob_ptr, rows, in_rows, mask_id, HAS_IDS
    )
    row_off = rows.to(tl.int64) * stride_row
    x = _load_logits(logits_ptr, row_off, active, banned_ptr, tl.arange(0, BLOCK_V), vocab)
    m = tl.max(tl.where(x == x, x, float("inf")), axis=1)  # NaN and +inf make the row invalid
    invalid = (m == float("inf")) | (m == NEG_INF)
    x = tl.where(invalid[:, None], NEG_INF, x)
    m = tl.where(invalid, 0.0, m)
    parts = _parts(x, BLOCK_R, BLOCK_V, PARTS)
    lanes = tl.arange(0, BLOCK_Q)[None, :]
    # the first argmax: the lowest column holding m (0 in a row that is not read)
    first = tl.full([BLOCK_R, BLOCK_Q], INT32_MAX, tl.int32)
    for q in tl.static_range(PARTS):
        first = tl.minimum(first, tl.where(parts[q] == m[:, None], q * BLOCK_Q + lanes, INT32_MAX))
    first = tl.min(first, axis=1)
    first = tl.where(first == INT32_MAX, 0, first)
    # -- 2. coarse cut
    cut_x = tl.full([BLOCK_R], NEG_INF, tl.float32)
    lower = tl.full([BLOCK_R], NEG_INF, tl.float32)
    found = invalid
    if USE_TOPK:
        xlo = tl.full([BLOCK_R, BLOCK_Q], float("inf"), tl.float32)
        for q in tl.static_range(PARTS):
            xq = _after(parts[q], xlo)
            xlo = tl.minimum(xlo, tl.where(xq > NEG_INF, xq, m[:, None]))
        span = m - tl.min(xlo, axis=1)
        # the first pivot j in 1..RADIX-1 with >= k logits at or above v_j = m - span * j / RADIX
        # (RADIX: none); v_j does not increase with j, so the counts do not decrease: binary search
        lo = tl.full([BLOCK_R], 1, tl.int32)
        hi = tl.full([BLOCK_R], RADIX, tl.int32)
        for _s in range(RADIX_BITS):
            mid = (lo + hi) // 2
            v = m - span * (mid.to(tl.float32) / RADIX)
            count = tl.zeros([BLOCK_R, BLOCK_Q], dtype=tl.int32)
            for q in tl.static_range(PARTS):
                count += (parts[q] >= v[:, None]).to(tl.int32)
            enough = tl.sum(count, axis=1) >= top_k
            hi = tl.where(enough, mid, hi)
            lo = tl.where(enough, lo, mid + 1)
        take = ~found & (lo < RADIX)
        cut_x = tl.where(take, m - span * (lo.to(tl.float32) / RADIX), cut_x)
        found = found | take
    elif USE_TOPP:
        z_all = tl.zeros([BLOCK_R, BLOCK_Q], dtype=tl.float64)
        for q in tl.static_range(PARTS):
            z_all += exp_weight(_scaled(_after(parts[q], z_all), m, inv_t, m * 0.0)).to(tl.float64)
        z_all = tl.sum(z_all, axis=1)
        need = tl.full([BLOCK_R], top_p, tl.float32).to(tl.float64) * z_all * TOPP_SLACK
        # the first j in 1..RADIX-1 with at least ``need`` of mass in the weights above 2**-j
        # (RADIX: none); the float32 sums add the same terms in the same order for every j, each
        # term no smaller for a larger j, so they do not decrease with j: binary search
        lo = tl.full([BLOCK_R], 1, tl.int32)
        hi = tl.full([BLOCK_R], RADIX, tl.int32)
        for _s in range(RADIX_BITS):
            mid = (lo + hi) // 2
            v = ((127 - mid) << 23).to(tl.float32, bitcast=True)  # 2**-mid, exactly
            mass = tl.zeros([BLOCK_R, BLOCK_Q], dtype=tl.float32)  # float32: TOPP_SLACK covers its rounding
            for q in tl.static_range(PARTS):
                w = exp_weight(_scaled(_after(parts[q], mass), m, inv_t, v * 0.0))
                mass += tl.where(w > v[:, None], w, 0.0)
            enough = tl.sum(mass, axis=1).to(tl.float64) >= need
            hi = tl.where(enough, mid, hi)
            lo = tl.where(enough, lo, mid + 1)
        take = ~found & (lo < RADIX)
        cut_w = tl.where(take, ((127 - lo) << 23).to(tl.float32, bitcast=True), 0.0)
        found = found | take
        # the same set as ``w > cut_w`` (w is non-decreasing in x), as a cut on the logits
        cut = tl.full([BLOCK_R, BLOCK_Q], float("inf"), tl.float32)
        for q in tl.static_range(PARTS):
            xq = _after(parts[q], cut)
            w = exp_weight(_scaled(xq, m, inv_t, cut_w * 0.0))
            cut = tl.minimum(cut, tl.where(w > cut_w[:, None], xq, float("inf")))
        cut_x = tl.min(cut, axis=1)
    elif not GREEDY:
        lower = -_gumbel(seed, first, row_id, offset)
    n_cand = tl.zeros([BLOCK_R, BLOCK_Q], dtype=tl.int32)
    for q in tl.static_range(PARTS):
        n_cand += _candidates(parts[q], m, inv_t, cut_x, lower, m * 0.0).to(tl.int32)
    n_cand = tl.sum(n_cand, axis=1)
    fits = tl.max(n_cand, axis=0) <= SLOTS
    x_thr = tl.full([BLOCK_R], NEG_INF, tl.float32)  # kept: x >= x_thr and w >= w_thr
    w_thr = tl.zeros([BLOCK_R], dtype=tl.float32)
    token = first
    # step 4's float64 sums, the token's weight and the largest kept weight besides the first
    # argmax's; with top-k or top-p, a row that fits has its kept set among the slots, summed there
    z = tl.zeros([BLOCK_R], dtype=tl.float64)
    ws = tl.zeros([BLOCK_R], dtype=tl.float64)
    w_tok = tl.zeros([BLOCK_R], dtype=tl.float32)
    second = tl.zeros([BLOCK_R], dtype=tl.float32)
    FILTERED: tl.constexpr = USE_TOPK or USE_TOPP
    sums_in_slots = fits & FILTERED
    if fits:
        # -- 3a. the candidates take slots; decide and draw among them
        zero = n_cand.to(tl.float32) * 0.0
        slot_base = rows.to(tl.int64) * SLOTS
        tl.store(slot_n_ptr + rows, tl.zeros([BLOCK_R], dtype=tl.int32), mask=in_rows)
        tl.debug_barrier()
        for q in tl.static_range(PARTS):
            xq = parts[q]
            cand = _candidates(xq, m, inv_t, cut_x, lower, zero)
            slot = tl.atomic_add(slot_n_ptr + rows[:, None] + lanes * 0, 1, mask=cand, sem="relaxed", scope="cta")
            tl.store(slot_x_ptr + slot_base[:, None] + slot, xq, mask=cand)
            tl.store(slot_col_ptr + slot_base[:, None] + slot, q * BLOCK_Q + lanes + slot * 0, mask=cand)
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
            if USE_TOPK:  # the tokens that top-k keeps are candidates
                z_k = tl.sum(tl.where(keep, wc, 0.0).to(tl.float64), axis=1)
            else:
                z_k = z_all
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
        if not GREEDY:
            # the largest score, ties to the lower id (the slots are in no id order)
            score = tl.where(keep, sc - _gumbel(seed, cc, row_id[:, None], offset), NEG_INF)
            top = tl.max(score, axis=1)
            token = tl.min(tl.where(keep & (score == top[:, None]), cc, INT32_MAX), axis=1)
        if FILTERED:
            wk = tl.where(keep, wc, 0.0)
            z = tl.sum(wk.to(tl.float64), axis=1)
            w_tok = tl.sum(tl.where(cc == token[:, None], wk, 0.0), axis=1)
            if WITH_ENTROPY:
                ws = tl.sum(tl.where(wk > 0.0, wk.to(tl.float64) * sc.to(tl.float64), 0.0), axis=1)
            if WITH_MARGIN:
                second = tl.max(tl.where(cc == first[:, None], 0.0, wk), axis=1)
    else:
        # -- 3b. many candidates: bisection on the resident row
        # (the searches start from the widest bounds: -inf to the maximum ``m``; the smallest positive
        # weight to the largest, 1 = exp(0) at the maximum)
        if USE_TOPK:
            key_lo = float_key(tl.full([BLOCK_R], NEG_INF, tl.float32))
            x_thr = _kth_largest(parts, top_k, key_lo, tl.where(invalid, key_lo, float_key(m)), PARTS, BLOCK_R,
                                 BLOCK_Q)
        if USE_TOPP:
            zero = n_cand.to(tl.float32) * 0.0
            z_lane = tl.zeros([BLOCK_R, BLOCK_Q], dtype=tl.float64)
            for q in tl.static_range(PARTS):
                xq = _after(parts[q], z_lane)
                z_lane += tl.where(xq >= x_thr[:, None], exp_weight(_scaled(xq, m, inv_t, zero)), 0.0).to(tl.float64)
            need = tl.full([BLOCK_R], top_p, tl.float32).to(tl.float64) * tl.sum(z_lane, axis=1)
            hi = float_key(tl.full([BLOCK_R], 1.0, tl.float32))
            lo = tl.where(invalid, hi, float_key(tl.full([BLOCK_R], MIN_WEIGHT, tl.float32)))
            w_thr = _topp_threshold(parts, m, inv_t, x_thr, need, lo, hi, PARTS, BLOCK_R, BLOCK_Q)
        if not GREEDY:
            # per lane: the best score so far, its column; the parts come in id order and only a
            # larger score replaces, so that ties go to the lower id
            zero = w_thr * 0.0
            lane_best = tl.full([BLOCK_R, BLOCK_Q], NEG_INF, tl.float32)
            lane_tok = tl.zeros([BLOCK_R, BLOCK_Q], dtype=tl.int32)
            for q in tl.static_range(PARTS):
                xq = _after(parts[q], lane_best)
                s = _scaled(xq, m, inv_t, zero)
                kept = (xq >= x_thr[:, None]) & (exp_weight(s) >= w_thr[:, None])
                col = _after(q * BLOCK_Q + lanes, lane_best)  # the noise too waits for the previous part
                score_q = tl.where(kept, s - _gumbel(seed, col, row_id[:, None], offset), NEG_INF)
                better = score_q > lane_best
                lane_best = tl.where(better, score_q, lane_best)
                lane_tok = tl.where(better, col, lane_tok)
            top = tl.max(lane_best, axis=1)
            token = tl.min(tl.where(lane_best == top[:, None], lane_tok, INT32_MAX), axis=1)
    # -- 4. otherwise: float64 sums over the kept set of the resident row
    if ~sums_in_slots:
        zero = token.to(tl.float32) * 0.0
        z_lane = tl.zeros([BLOCK_R, BLOCK_Q], dtype=tl.float64)
        ws_lane = tl.zeros([BLOCK_R, BLOCK_Q], dtype=tl.float64)
        w_tok_lane = tl.zeros([BLOCK_R, BLOCK_Q], dtype=tl.float32)
        second_lane = tl.zeros([BLOCK_R, BLOCK_Q], dtype=tl.float32)
        for q in tl.static_range(PARTS):
            xq = _after(parts[q], z_lane)
            s = _scaled(xq, m, inv_t, zero)
            w = exp_weight(s)
            w = tl.where((xq >= x_thr[:, None]) & (w >= w_thr[:, None]), w, 0.0)
            col = q * BLOCK_Q + lanes
            z_lane += w.to(tl.float64)
            w_tok_lane += tl.where(col == token[:, None], w, 0.0)
            if WITH_ENTROPY:
                ws_lane += tl.where(w > 0.0, w.to(tl.float64) * s.to(tl.float64), 0.0)
            if WITH_MARGIN:
                second_lane = tl.maximum(second_lane, tl.where(col == first[:, None], 0.0, w))
        z = tl.sum(z_lane, axis=1)
        ws = tl.sum(ws_lane, axis=1)
        w_tok = tl.sum(w_tok_lane, axis=1)
        second = tl.max(second_lane, axis=1)
    if GREEDY:  # the token is the first argmax, whose weight is exp_weight(0) = 1 exactly
        w_tok = tl.full([BLOCK_R], 1.0, tl.float32)
    _store_outputs(out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr, rows, in_rows, active, is_masked,
                   current, invalid, token, w_tok, second, z, ws, WITH_ENTROPY, WITH_MARGIN)


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
    # pass 1: maximum (NaN and +inf count as +inf: the row is then invalid), first argmax, key
    # range; per-lane accumulators, one reduction across the threads after the sweep
    lane_m = tl.full([BLOCK_R, BLOCK_V], NEG_INF, tl.float32)
    lane_first = tl.zeros([BLOCK_R, BLOCK_V], dtype=tl.int32)
    lane_kmin = tl.full([BLOCK_R, BLOCK_V], INT32_MAX, tl.int32)
    lane_kmax = tl.full([BLOCK_R, BLOCK_V], INT32_MIN, tl.int32)
    for start in range(0, n_cols, BLOCK_V):
        x = _load_logits(logits_ptr, row_off, active, banned_ptr, start + lanes, vocab)
        x = tl.where(x == x, x, float("inf"))
        better = x > lane_m  # a later column replaces only a larger value: the first argmax
        lane_first = tl.where(better, start + lanes[None, :], lane_first)
        lane_m = tl.where(better, x, lane_m)
        if USE_TOPK:
            inb = start + lanes[None, :] < vocab
            key = float_key(x)
            lane_kmin = tl.minimum(lane_kmin, tl.where(inb, key, INT32_MAX))
            lane_kmax = tl.maximum(lane_kmax, tl.where(inb, key, INT32_MIN))
    m = tl.max(lane_m, axis=1)
    first = tl.min(tl.where(lane_m == m[:, None], lane_first, INT32_MAX), axis=1)
    invalid = (m == float("inf")) | (m == NEG_INF)
    m = tl.where(invalid, 0.0, m)
    first = tl.where(invalid, 0, first)
    live_rows = active & ~invalid
    kthr = tl.full([BLOCK_R], INT32_MIN, tl.int32)  # kept: key(x) >= kthr and key(w) >= wthr
    wthr = tl.full([BLOCK_R], INT32_MIN, tl.int32)
    if USE_TOPK:
        lo = tl.min(lane_kmin, axis=1)
        hi = tl.where(live_rows, tl.max(lane_kmax, axis=1), lo)
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
        if WITH_MARGIN:
            second = tl.maximum(second, tl.max(tl.where(cols[None, :] == first[:, None], 0.0, w), axis=1))
        if not GREEDY:
            score = tl.where(kept, s - _gumbel(seed, cols[None, :], row_id[:, None], offset), NEG_INF)
            block_best = tl.max(score, axis=1)
            block_arg = tl.argmax(score, axis=1)
            better = block_best > best
            best = tl.where(better, block_best, best)
            token = tl.where(better, start + block_arg, token)
            w_tok = tl.where(better, tl.sum(tl.where(lanes[None, :] == block_arg[:, None], w, 0.0), axis=1), w_tok)
    if GREEDY:  # the token is the first argmax, whose weight is exp_weight(0) = 1 exactly
        w_tok = tl.full([BLOCK_R], 1.0, tl.float32)
    _store_outputs(out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr, rows, in_rows, active, is_masked,
                   current, invalid, token, w_tok, second, z, ws, WITH_ENTROPY, WITH_MARGIN)


def resident_block(vocab: int, dtype: torch.dtype) -> int:
    """The block of the resident kernel for rows of ``vocab`` logits of ``dtype``; 0: too long."""
    block = block_size(vocab, 1 << 30)
    return block if block <= RESIDENT_MAX_BLOCK[4 if dtype == torch.float32 else 2] else 0


def picks_resident(vocab: int, dtype: torch.dtype, top_k: int) -> bool:
    """Whether the launcher's default (``resident=None``) is the resident kernel: top-k is on
    (``0 < top_k < vocab``) and the row fits (:func:`resident_block`).

    The rule follows the kernel table measured on an H200 with Triton 3.6
    (``bench/results/triton_kernels_NVIDIA_H200.md``, 4096 rows): with top-k 30 the resident kernel
    was 1.9-2.9x faster than the streamed one, whose top-k bisection sweeps the row up to 32 times;
    without top-k the streamed kernel was faster: 1.1-1.2x with no filter or greedy and 1.4-2x with
    top-p alone at V = 30522, 2-4.9x at V = 50257 (bf16, where the resident kernel holds 64 logits
    per thread).
    """
    return 0 < top_k < vocab and resident_block(vocab, dtype) > 0


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
    else empty. ``resident`` picks the kernel: True the resident one where the row fits (else the
    streamed one), False the streamed one, None :func:`picks_resident`.
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
    if block and (resident if resident is not None else picks_resident(vocab, logits.dtype, top_k)):
        if INTERPRETED:
            block_r = max(1, min(triton.next_power_of_2(n_rows), (1 << 15) // block, 16))
            num_warps = 4
        else:
            block_r, num_warps = 1, resident_warps(block)
        slot_x = torch.empty(n_rows, COMPACT_SLOTS, dtype=torch.float32, device=device)
        slot_col = torch.empty(n_rows, COMPACT_SLOTS, dtype=torch.int32, device=device)
        slot_n = torch.empty(n_rows, dtype=torch.int32, device=device)
        _sample_resident_kernel[(triton.cdiv(n_rows, block_r),)](
            logits, logits.stride(0), *common, slot_x, slot_col, slot_n, *scalars, **flags,
            BLOCK_R=block_r, BLOCK_V=block, SLOTS=COMPACT_SLOTS, PARTS=resident_parts(block), num_warps=num_warps, **LAUNCH_OPTIONS,
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


def resident_parts(block: int) -> int:
    """Parts that the resident kernel walks a row of ``block`` logits in (:data:`RESIDENT_PARTS`,
    at most one per logit)."""
    return min(RESIDENT_PARTS, block)


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
