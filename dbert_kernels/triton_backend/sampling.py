"""Fused categorical sampling with the absorbing posterior step: kernel, launcher, custom op.

Semantics: :func:`dbert_kernels.reference.sample` (the kernel follows it bit for bit where it is
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

One **persistent, streamed** kernel (the design of FlashInfer's and vLLM's samplers): a grid of
a few programs per SM, each looping over rows, sweeping each row in blocks of ``BLOCK_V`` logits.
The programs in flight hold few enough rows that their bytes stay in L2 (:func:`programs`), so
only the first sweep of a row reads DRAM:

* sweep 1: validity, maximum ``m``, first argmax and, with top-k, a histogram of the top
  :data:`X_BITS` bits of the logits' order-preserving keys;
* with top-p (unless top-k already left few candidates): a sweep for the normaliser ``Z`` of the
  top-k set and a histogram of the weights' top bits, whose counts bound the mass above each bin;
* the histogram gives the bin holding the k-th largest logit (or the top-p boundary): when at most
  :data:`SLOTS` candidates lie at or above it (the usual case), a sweep compacts them in id order
  into a small per-program buffer, where top-k and top-p are decided exactly (rank and float64
  mass of strictly larger weights, compared pairwise), the noise is drawn for the candidates
  only, and the sums run over the kept ones;
* otherwise (a crowded bin, a large k, a flat top-p tail) the thresholds are found by bisection
  over the keys, one sweep per step, and a last sweep draws and sums over the row;
* no filter or greedy: a second sweep draws and sums.

Only the row's block shape and the dtype of the logits are compiled in; every option (greedy,
top-k, top-p, ids, entropy, margin) is a run-time argument, so that one compiled kernel per
logits dtype serves every call. Invalid rows (NaN or +inf among the allowed logits, or no finite
allowed logit), which the public op rejects when ``validate=True``: token ``-1``, confidence,
entropy and margin NaN; no read outside the row.

The custom op ``torch.ops.dbert_kernels.triton_sample`` (with a fake implementation for shape
propagation) wraps the launcher; its Philox key and offset are a tensor, so that a sampling step
can be compiled or captured in a CUDA graph without a host synchronisation.
"""

# No ``from __future__ import annotations``: torch.library reads the annotations at runtime.

import functools

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

#: Candidates per row that the compacted path holds (the per-program buffer's slots).
SLOTS = 256
#: Candidates compared at once in the pairwise top-k / top-p decisions (bounds the registers).
PAIR_CHUNK = tl.constexpr(8)
#: Top bits of a logit's key that sweep 1's histogram counts (sign, exponent, 1 mantissa bit: two
#: bins per octave).
X_BITS = tl.constexpr(10)
X_BINS = tl.constexpr(1 << X_BITS.value)
#: Bits of a weight ``w`` in [0, 1] below its histogram bin: the bin is the exponent and the top
#: 3 mantissa bits; the bins of ``0 < w <= 1`` lie below :data:`W_BINS`.
W_SHIFT = tl.constexpr(20)
W_BINS = tl.constexpr(1024)
#: Slack of the top-p cut's mass bound, relative to the normaliser: above the rounding of its
#: float32 sums over :data:`W_BINS` bins (at most ``W_BINS * 2**-24`` relative, times 2**(1/8)).
TOPP_SLACK = tl.constexpr(2.0**-10)
#: Logits per block of a sweep, warps and the register cap per thread on a GPU: 2 logits per
#: thread at a time, two programs per SM, no spills (``compile_check --production --strict``).
GPU_BLOCK_V = 512
GPU_WARPS = 8
GPU_MAX_REGISTERS = 128
#: Programs per SM at most (as many as its 64K registers hold at 8 warps x 128 registers); fewer
#: when the rows in flight would not fit in half of the L2 cache.
PROGRAMS_PER_SM = 2
#: Programs under the interpreter (more than one tile per program: the persistent loop runs).
INTERPRETED_PROGRAMS = 2
#: Integer arguments that Triton must not specialise on (equal to 1, divisible by 16): they
#: change from call to call, and each value class would otherwise compile another copy.
NO_SPECIALIZE = ("n_rows", "mask_id", "top_k", "has_ids", "greedy", "use_topk", "use_topp", "with_entropy",
                 "with_margin")


@triton.jit
def _reveal(rng_ptr, row_index_ptr, ids_ptr, prob_ptr, rows, in_rows, mask_id, has_ids):
    """The absorbing decision of a block of rows: (seed, offset, Philox row ids, current tokens,
    masked on entry, revealed now)."""
    seed = tl.load(rng_ptr)
    offset = tl.load(rng_ptr + 1)
    row_id = tl.load(row_index_ptr + rows, mask=in_rows, other=0)
    current = tl.load(ids_ptr + rows, mask=in_rows & ((rows * 0 + has_ids) != 0), other=mask_id).to(tl.int64)
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
    # memory)
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
                   current, invalid, token, w_tok, second, z, ws, with_entropy, with_margin):
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
    ent = (tl.log(z_safe) - ws / z_safe).to(tl.float32)
    ent = tl.where(active, tl.where(invalid, nan, ent), tl.where(is_masked, nan, 0.0))
    tl.store(out_ent_ptr + rows, ent, mask=in_rows & ((rows * 0 + with_entropy) != 0))
    margin = ((1.0 - second.to(tl.float64)) / z_safe).to(tl.float32)
    margin = tl.where(active, tl.where(invalid, nan, margin), tl.where(is_masked, nan, 1.0))
    tl.store(out_margin_ptr + rows, margin, mask=in_rows & ((rows * 0 + with_margin) != 0))


@triton.jit
def _histogram(bins, mask, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, NB: tl.constexpr):
    """Per-row counts [BLOCK_R * NB] of ``bins`` [BLOCK_R, BLOCK_V] (each in ``0..NB-1``) where
    ``mask``; row ``r``'s counts are ``r * NB + b``."""
    flat = bins + (tl.arange(0, BLOCK_R) * NB)[:, None]
    return tl.histogram(tl.reshape(flat, [BLOCK_R * BLOCK_V]), BLOCK_R * NB,
                        mask=tl.reshape(mask, [BLOCK_R * BLOCK_V]))


@triton.jit
def _topk_cut(hist, top_k, BLOCK_R: tl.constexpr):
    """From the per-row counts of the logits' key bins: (the lowest key of the bin holding the
    k-th largest logit, INT32_MIN where fewer than ``top_k`` logits are finite; the number of
    finite logits at or above it)."""
    h = tl.reshape(hist, [BLOCK_R, X_BINS])
    bins = tl.arange(0, X_BINS)[None, :]
    total = tl.sum(h, axis=1)
    at_or_above = total[:, None] - tl.cumsum(h, axis=1) + h  # non-increasing in the bin
    enough = at_or_above >= top_k
    bin_k = tl.max(tl.where(enough, bins, -1), axis=1)
    some = bin_k >= 0
    cut = tl.where(some, (bin_k - X_BINS // 2) << (32 - X_BITS), INT32_MIN)
    n_cand = tl.where(some, tl.min(tl.where(enough, at_or_above, INT32_MAX), axis=1), total)
    return cut, n_cand


@triton.jit
def _topp_cut(hist, z_k, top_p, BLOCK_R: tl.constexpr):
    """From the per-row counts of the weights' bins and the float64 normaliser ``z_k``: (the lowest
    weight key of the highest bin ``c`` whose weights ``>= edge(c)`` hold, by the counts' bound,
    more than ``top_p * z_k`` of mass, INT32_MIN where no bin does; the number of positive
    weights at or above it).

    Every weight below ``edge(c)`` then has more than ``top_p * z_k`` of mass strictly above it,
    so that top-p keeps none of them. The mass at or above ``edge(c)`` is at least ``z_k`` less
    the counts below ``c`` times their bins' upper edges (float32 sums, whose rounding
    :data:`TOPP_SLACK` covers).
    """
    h = tl.reshape(hist, [BLOCK_R, W_BINS])
    bins = tl.arange(0, W_BINS)[None, :]
    up_mass = h.to(tl.float32) * ((bins + 1) << W_SHIFT).to(tl.float32, bitcast=True)
    below_up = tl.cumsum(up_mass, axis=1) - up_mass  # non-decreasing in the bin
    need = tl.full([BLOCK_R], top_p, tl.float32).to(tl.float64) * z_k
    room = (z_k - need - z_k * TOPP_SLACK).to(tl.float32)
    ok = below_up < room[:, None]
    bin_p = tl.max(tl.where(ok, bins, -1), axis=1)
    total = tl.sum(h, axis=1)
    at_or_above = total[:, None] - tl.cumsum(h, axis=1) + h
    some = bin_p >= 0
    cut = tl.where(some, bin_p << W_SHIFT, INT32_MIN)
    n_cand = tl.where(some, tl.min(tl.where(ok, at_or_above, INT32_MAX), axis=1), total)
    return cut, n_cand


@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _sample_kernel(
    logits_ptr, stride_row, ids_ptr, prob_ptr, banned_ptr, row_index_ptr, rng_ptr,
    out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr, slot_x_ptr, slot_col_ptr,
    n_rows, vocab, mask_id, inv_t, top_k, top_p,
    has_ids, greedy, use_topk, use_topp, with_entropy, with_margin,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr, SLOTS: tl.constexpr,
):
    """Each program loops over tiles of ``BLOCK_R`` rows; see the module docstring for the sweeps."""
    lanes = tl.arange(0, BLOCK_V)
    slots = tl.arange(0, SLOTS)
    slot_base = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64) * SLOTS
    n_tiles = tl.cdiv(n_rows, BLOCK_R)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        rows = tile * BLOCK_R + tl.arange(0, BLOCK_R)
        in_rows = rows < n_rows
        seed, offset, row_id, current, is_masked, active = _reveal(
            rng_ptr, row_index_ptr, ids_ptr, prob_ptr, rows, in_rows, mask_id, has_ids
        )
        row_off = rows.to(tl.int64) * stride_row
        # a tile whose rows are all kept as they are runs no sweep at all
        n_cols = tl.where(tl.max(active.to(tl.int32), axis=0) > 0, vocab, 0)
        # -- sweep 1 (the only read from DRAM): maximum (NaN and +inf count as +inf: the row is then
        # invalid), first argmax, with top-k the histogram of the finite logits' key bins
        lane_m = tl.full([BLOCK_R, BLOCK_V], NEG_INF, tl.float32)
        lane_first = tl.zeros([BLOCK_R, BLOCK_V], dtype=tl.int32)
        hist_x = tl.zeros([BLOCK_R * X_BINS], dtype=tl.int32)
        for start in range(0, n_cols, BLOCK_V):
            x = _load_logits(logits_ptr, row_off, active, banned_ptr, start + lanes, vocab)
            x = tl.where(x == x, x, float("inf"))
            better = x > lane_m  # a later column replaces only a larger value: the first argmax
            lane_first = tl.where(better, start + lanes[None, :], lane_first)
            lane_m = tl.where(better, x, lane_m)
            if use_topk != 0:
                finite = (x > NEG_INF) & (x < float("inf"))
                hist_x += _histogram((float_key(x) >> (32 - X_BITS)) + X_BINS // 2, finite, BLOCK_R, BLOCK_V,
                                     X_BINS)
        m = tl.max(lane_m, axis=1)
        first = tl.min(tl.where(lane_m == m[:, None], lane_first, INT32_MAX), axis=1)
        invalid = (m == float("inf")) | (m == NEG_INF)
        m = tl.where(invalid, 0.0, m)
        first = tl.where(invalid, 0, first)
        live = active & ~invalid
        # kept on the streamed path: key(x) >= kthr and key(w) >= wthr; candidates of the
        # compacted path: key(x) >= cut_x and key(w) >= cut_w
        kthr = tl.full([BLOCK_R], INT32_MIN, tl.int32)
        wthr = tl.full([BLOCK_R], INT32_MIN, tl.int32)
        cut_x = tl.full([BLOCK_R], INT32_MIN, tl.int32)
        cut_w = tl.full([BLOCK_R], INT32_MIN, tl.int32)
        compact = live & (rows < 0)  # rows decided in the slots (none yet)
        z_k = tl.zeros([BLOCK_R], dtype=tl.float64)
        if use_topk != 0:
            cut_x, n_cand = _topk_cut(hist_x, top_k, BLOCK_R)
            compact = live & (n_cand <= SLOTS)
            # a crowded row: the exact k-th largest by bisection over the keys from the bin's
            # lowest key (at least k logits at or above it) to the maximum's
            lo = tl.where(live & ~compact, cut_x, INT32_MIN)
            hi = tl.where(live & ~compact, float_key(m), INT32_MIN)
            steps = 0
            while (tl.max((lo < hi).to(tl.int32), axis=0) > 0) & (steps < MAX_SEARCH_STEPS):
                searching = lo < hi
                pivot = (lo.to(tl.int64) + ((hi.to(tl.int64) - lo.to(tl.int64) + 1) >> 1)).to(tl.int32)
                count = tl.zeros([BLOCK_R], dtype=tl.int32)
                above = tl.full([BLOCK_R], INT32_MAX, tl.int32)
                below = tl.full([BLOCK_R], INT32_MIN, tl.int32)
                for start in range(0, vocab, BLOCK_V):
                    inb = start + lanes[None, :] < vocab
                    x = _load_logits(logits_ptr, row_off, searching, banned_ptr, start + lanes, vocab)
                    key = float_key(x)
                    ge = inb & (key >= pivot[:, None])
                    count += tl.sum(ge.to(tl.int32), axis=1)
                    above = tl.minimum(above, tl.min(tl.where(ge, key, INT32_MAX), axis=1))
                    below = tl.maximum(below, tl.max(tl.where(inb & ~ge, key, INT32_MIN), axis=1))
                enough = count >= top_k
                lo = tl.where(searching & enough, above, lo)
                hi = tl.where(searching, tl.where(enough, tl.where(count == top_k, above, hi), below), hi)
                steps += 1
            kthr = tl.where(compact, INT32_MIN, lo)
        k_compact = compact  # rows whose top-k candidates are compacted (their top-p too is decided there)
        if use_topp != 0:
            # -- the rows that top-k did not leave compacted: the normaliser of the top-k set, the
            # weights' range and the histogram of their bins
            weigh = live & ~k_compact
            n_weigh = tl.where(tl.max(weigh.to(tl.int32), axis=0) > 0, vocab, 0)
            wmin = tl.full([BLOCK_R], INT32_MAX, tl.int32)
            wmax = tl.full([BLOCK_R], INT32_MIN, tl.int32)
            hist_w = tl.zeros([BLOCK_R * W_BINS], dtype=tl.int32)
            for start in range(0, n_weigh, BLOCK_V):
                x = _load_logits(logits_ptr, row_off, weigh, banned_ptr, start + lanes, vocab)
                w = tl.where(float_key(x) >= kthr[:, None], exp_weight((x - m[:, None]) * inv_t), 0.0)
                z_k += tl.sum(w.to(tl.float64), axis=1)
                wkey = float_key(w)
                wmin = tl.minimum(wmin, tl.min(tl.where(w > 0.0, wkey, INT32_MAX), axis=1))
                wmax = tl.maximum(wmax, tl.max(wkey, axis=1))
                hist_w += _histogram(wkey >> W_SHIFT, w > 0.0, BLOCK_R, BLOCK_V, W_BINS)
            cut_p, n_cand_p = _topp_cut(hist_w, z_k, top_p, BLOCK_R)
            fits = weigh & (n_cand_p <= SLOTS)
            cut_x = tl.where(fits, kthr, cut_x)
            cut_w = tl.where(fits, cut_p, cut_w)
            compact = compact | fits
            # a crowded row: the smallest kept weight by bisection over the weights' keys
            need = tl.full([BLOCK_R], top_p, tl.float32).to(tl.float64) * z_k
            lo = tl.where(weigh & ~fits, wmin, wmax)
            hi = wmax
            steps = 0
            while (tl.max((lo < hi).to(tl.int32), axis=0) > 0) & (steps < MAX_SEARCH_STEPS):
                searching = lo < hi
                pivot = (lo.to(tl.int64) + ((hi.to(tl.int64) - lo.to(tl.int64)) >> 1)).to(tl.int32)
                mass = tl.zeros([BLOCK_R], dtype=tl.float64)
                above = tl.full([BLOCK_R], INT32_MAX, tl.int32)
                below = tl.full([BLOCK_R], INT32_MIN, tl.int32)
                for start in range(0, vocab, BLOCK_V):
                    x = _load_logits(logits_ptr, row_off, searching, banned_ptr, start + lanes, vocab)
                    w = tl.where(float_key(x) >= kthr[:, None], exp_weight((x - m[:, None]) * inv_t), 0.0)
                    wkey = float_key(w)
                    gt = wkey > pivot[:, None]
                    mass += tl.sum(tl.where(gt, w.to(tl.float64), 0.0), axis=1)
                    above = tl.minimum(above, tl.min(tl.where(gt, wkey, INT32_MAX), axis=1))
                    below = tl.maximum(below, tl.max(tl.where(gt, INT32_MIN, wkey), axis=1))
                small = mass < need
                lo = tl.where(searching & ~small, above, lo)
                hi = tl.where(searching & small, below, hi)
                steps += 1
            wthr = tl.where(weigh & ~fits, lo, INT32_MIN)
        # the outputs' float64 sums over the kept set, the token, its weight and the largest kept
        # weight besides the first argmax's
        z = tl.zeros([BLOCK_R], dtype=tl.float64)
        ws = tl.zeros([BLOCK_R], dtype=tl.float64)
        token = first
        w_tok = tl.zeros([BLOCK_R], dtype=tl.float32)
        second = tl.zeros([BLOCK_R], dtype=tl.float32)
        if tl.max(compact.to(tl.int32), axis=0) > 0:
            # -- compacted rows: the candidates take slots in id order; decide and draw among them
            tl.debug_barrier()  # the previous tile's reads of the slots are done
            filled = tl.zeros([BLOCK_R], dtype=tl.int32)
            for start in range(0, vocab, BLOCK_V):
                x = _load_logits(logits_ptr, row_off, compact, banned_ptr, start + lanes, vocab)
                cand = (x > NEG_INF) & (float_key(x) >= cut_x[:, None])
                if use_topp != 0:
                    w = exp_weight((x - m[:, None]) * inv_t)
                    cand = cand & (w > 0.0) & (float_key(w) >= cut_w[:, None])
                rank = filled[:, None] + tl.cumsum(cand.to(tl.int32), axis=1) - 1
                tl.store(slot_x_ptr + slot_base[:, None] + rank, x, mask=cand & (rank < SLOTS))
                tl.store(slot_col_ptr + slot_base[:, None] + rank, start + lanes[None, :] + rank * 0,
                         mask=cand & (rank < SLOTS))
                filled += tl.sum(cand.to(tl.int32), axis=1)
            tl.debug_barrier()
            have = compact[:, None] & (slots[None, :] < filled[:, None])
            n_filled = tl.max(tl.where(compact, filled, 0), axis=0)
            xc = tl.load(slot_x_ptr + slot_base[:, None] + slots[None, :], mask=have, other=NEG_INF)
            keep = have
            x_thr = tl.full([BLOCK_R], NEG_INF, tl.float32)
            if use_topk != 0:
                # rank: the candidates strictly larger (every larger logit is a candidate)
                larger = tl.zeros([BLOCK_R, SLOTS], dtype=tl.int32)
                for c in range(0, n_filled, PAIR_CHUNK):
                    other = c + tl.arange(0, PAIR_CHUNK)
                    xo = tl.load(slot_x_ptr + slot_base[:, None] + other[None, :],
                                 mask=compact[:, None] & (other[None, :] < filled[:, None]), other=NEG_INF)
                    larger += tl.sum((xo[:, None, :] > xc[:, :, None]).to(tl.int32), axis=2)
                keep = keep & (larger < top_k)
                x_thr = tl.min(tl.where(keep, xc, float("inf")), axis=1)
            sc = (xc - m[:, None]) * inv_t
            wc = exp_weight(sc)
            if use_topp != 0:
                # top-k left the row compacted: its normaliser is the kept candidates' sum
                z_k = tl.where(k_compact, tl.sum(tl.where(keep, wc, 0.0).to(tl.float64), axis=1), z_k)
                wk = tl.where(keep, wc, 0.0)
                above = tl.zeros([BLOCK_R, SLOTS], dtype=tl.float64)
                for c in range(0, n_filled, PAIR_CHUNK):
                    other = c + tl.arange(0, PAIR_CHUNK)
                    xo = tl.load(slot_x_ptr + slot_base[:, None] + other[None, :],
                                 mask=compact[:, None] & (other[None, :] < filled[:, None]), other=NEG_INF)
                    wo = tl.where(xo >= x_thr[:, None], exp_weight((xo - m[:, None]) * inv_t), 0.0)
                    bigger = wo[:, None, :] > wk[:, :, None]
                    above += tl.sum(tl.where(bigger, wo[:, None, :].to(tl.float64), 0.0), axis=2)
                keep = keep & (above < (tl.full([BLOCK_R], top_p, tl.float32).to(tl.float64) * z_k)[:, None])
            cc = tl.load(slot_col_ptr + slot_base[:, None] + slots[None, :], mask=have, other=0)
            wk = tl.where(keep, wc, 0.0)
            # the largest score, ties to the lower id (the slots are in id order)
            score = tl.where(keep, sc - _gumbel(seed, cc, row_id[:, None], offset), NEG_INF)
            top = tl.max(score, axis=1)
            drawn = tl.min(tl.where(keep & (score == top[:, None]), cc, INT32_MAX), axis=1)
            token = tl.where(compact & (greedy == 0), drawn, token)
            z = tl.where(compact, tl.sum(wk.to(tl.float64), axis=1), z)
            w_tok = tl.where(compact, tl.sum(tl.where(cc == token[:, None], wk, 0.0), axis=1), w_tok)
            ws = tl.where(compact, tl.sum(tl.where(wk > 0.0, wk.to(tl.float64) * sc.to(tl.float64), 0.0), axis=1), ws)
            second = tl.where(compact, tl.max(tl.where(cc == first[:, None], 0.0, wk), axis=1), second)
        # -- the other rows: a sweep draws and sums over the kept set
        swept = live & ~compact
        best = tl.full([BLOCK_R], NEG_INF, tl.float32)
        n_swept = tl.where(tl.max(swept.to(tl.int32), axis=0) > 0, vocab, 0)
        for start in range(0, n_swept, BLOCK_V):
            cols = start + lanes
            x = _load_logits(logits_ptr, row_off, swept, banned_ptr, cols, vocab)
            s = (x - m[:, None]) * inv_t
            w = exp_weight(s)
            kept = (float_key(x) >= kthr[:, None]) & (float_key(w) >= wthr[:, None]) & (x > NEG_INF)
            w = tl.where(kept, w, 0.0)
            z += tl.sum(w.to(tl.float64), axis=1)
            ws += tl.sum(tl.where(w > 0.0, w.to(tl.float64) * s.to(tl.float64), 0.0), axis=1)
            second = tl.maximum(second, tl.max(tl.where(cols[None, :] == first[:, None], 0.0, w), axis=1))
            if greedy == 0:
                score = tl.where(kept, s - _gumbel(seed, cols[None, :], row_id[:, None], offset), NEG_INF)
                block_best = tl.max(score, axis=1)
                block_arg = tl.argmax(score, axis=1)
                better = block_best > best
                best = tl.where(better, block_best, best)
                token = tl.where(better, start + block_arg, token)
                w_tok = tl.where(better, tl.sum(tl.where(lanes[None, :] == block_arg[:, None], w, 0.0), axis=1),
                                 w_tok)
        if greedy != 0:  # the token is the first argmax, whose weight is exp_weight(0) = 1 exactly
            w_tok = tl.full([BLOCK_R], 1.0, tl.float32)
        _store_outputs(out_tok_ptr, out_conf_ptr, out_ent_ptr, out_margin_ptr, rows, in_rows, active, is_masked,
                       current, invalid, token, w_tok, second, z, ws, with_entropy, with_margin)


@functools.cache
def _device_caps(index: int) -> tuple[int, int]:
    """(SMs, L2 bytes) of CUDA device ``index``."""
    props = torch.cuda.get_device_properties(index)
    return props.multi_processor_count, int(getattr(props, "L2_cache_size", 0) or 0)


def programs(n_tiles: int, row_bytes: int, device: torch.device) -> int:
    """Programs of the persistent grid for ``n_tiles`` tiles whose rows hold ``row_bytes`` each.

    On a GPU: up to :data:`PROGRAMS_PER_SM` per SM, fewer when the rows in flight (one per
    program) would take more than half of the L2 cache, at least one per SM; under the
    interpreter :data:`INTERPRETED_PROGRAMS`. Never more than the tiles.
    """
    if INTERPRETED or device.type != "cuda":
        return max(1, min(n_tiles, INTERPRETED_PROGRAMS))
    sms, l2_bytes = _device_caps(device.index if device.index is not None else torch.cuda.current_device())
    in_l2 = l2_bytes // 2 // max(row_bytes, 1) if l2_bytes else sms * PROGRAMS_PER_SM
    return max(1, min(n_tiles, max(sms, min(sms * PROGRAMS_PER_SM, in_l2))))


def launch_shape(n_rows: int, vocab: int) -> tuple[int, int, int]:
    """(rows per tile, logits per block, warps) of the kernel: one row per tile on a GPU; many
    under the interpreter, whose cost is per operation."""
    if INTERPRETED:
        block_v = block_size(vocab, 4096)
        return max(1, min(triton.next_power_of_2(n_rows), (1 << 15) // block_v)), block_v, 4
    return 1, block_size(vocab, GPU_BLOCK_V), GPU_WARPS


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the sampling kernel; returns (tokens [R] int64, confidence [R], entropy, margin).

    ``inv_temperature`` is ``1 / T`` (1 when greedy), rounded to float32 by the kernel like the
    reference's ``torch.tensor(1 / T, dtype=float32)``; ``top_k <= 0`` or ``>= V`` disables top-k,
    ``top_p >= 1`` disables top-p; ``entropy`` and ``margin`` are ``[R]`` float32 when asked for,
    else empty.
    """
    n_rows, vocab = logits.shape
    device = logits.device
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    tokens, conf, entropy, margin = empty_sample_outputs(logits, with_entropy, with_margin)
    if n_rows == 0:
        return tokens, conf, entropy, margin
    use_topk = 0 < top_k < vocab
    block_r, block_v, num_warps = launch_shape(n_rows, vocab)
    grid = programs(triton.cdiv(n_rows, block_r), vocab * logits.element_size(), device)
    slot_x = torch.empty(grid * block_r * SLOTS, dtype=torch.float32, device=device)
    slot_col = torch.empty(grid * block_r * SLOTS, dtype=torch.int32, device=device)
    _sample_kernel[(grid,)](
        logits, logits.stride(0), tokens if ids is None else ids.contiguous(), unmask_prob.contiguous(),
        banned.contiguous().view(torch.int8), row_index.contiguous(), rng,
        tokens, conf, entropy if with_entropy else conf, margin if with_margin else conf, slot_x, slot_col,
        n_rows, vocab, mask_id, inv_temperature, top_k if use_topk else 0, top_p,
        int(ids is not None), int(greedy), int(use_topk), int(top_p < 1.0), int(with_entropy), int(with_margin),
        BLOCK_R=block_r, BLOCK_V=block_v, SLOTS=SLOTS, num_warps=num_warps, **LAUNCH_OPTIONS,
        **({} if INTERPRETED else {"maxnreg": GPU_MAX_REGISTERS}),
    )
    return tokens, conf, entropy, margin


#: The launcher as the ``torch.library`` op ``dbert_kernels::triton_sample`` (``torch.compile``
#: traces the fake below instead of the launch).
triton_sample = torch.library.custom_op("dbert_kernels::triton_sample", mutates_args=())(launch_sample)


@triton_sample.register_fake
def _(logits, ids, unmask_prob, banned, row_index, rng, mask_id, inv_temperature, greedy, top_k, top_p,
      with_entropy, with_margin):
    return empty_sample_outputs(logits, with_entropy, with_margin)
