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
def _sample_kernel(
    logits_ptr, stride_row, ids_ptr, prob_ptr, banned_ptr, row_index_ptr, rng_ptr,
    out_tok_ptr, out_conf_ptr, out_ent_ptr,
    n_rows, vocab, mask_id, inv_t, top_k, top_p,
    HAS_IDS: tl.constexpr, GREEDY: tl.constexpr, USE_TOPK: tl.constexpr, USE_TOPP: tl.constexpr,
    FILTERED: tl.constexpr,
    WITH_ENTROPY: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    in_rows = rows < n_rows
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
    tl.store(out_tok_ptr + rows, token, mask=in_rows)
    tl.store(out_conf_ptr + rows, conf, mask=in_rows)
    if WITH_ENTROPY:
        ent = log_z - run_xs / tl.where(run_sum > 0.0, run_sum, 1.0)
        tl.store(out_ent_ptr + rows, tl.where(active, tl.where(invalid, nan, ent), 0.0), mask=in_rows)


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the sampling kernel; returns (tokens [R] int64, confidence [R], entropy).

    ``top_k <= 0`` or ``>= V`` disables top-k, ``top_p >= 1`` disables top-p; ``entropy`` is
    ``[R]`` float32 (nats, 0 for rows not sampled) when ``with_entropy`` else an empty tensor.
    """
    n_rows, vocab = logits.shape
    device = logits.device
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    tokens = torch.empty(n_rows, dtype=torch.int64, device=device)
    conf = torch.empty(n_rows, dtype=torch.float32, device=device)
    entropy = torch.empty(n_rows if with_entropy else 0, dtype=torch.float32, device=device)
    if n_rows == 0:
        return tokens, conf, entropy
    use_topk = 0 < top_k < vocab
    use_topp = top_p < 1.0
    if INTERPRETED:  # many rows per program: the interpreter's cost is per operation
        block_v = block_size(vocab, 4096)
        block_r = max(1, min(triton.next_power_of_2(n_rows), (1 << 16) // block_v))
        num_warps = 4
    else:
        block_v, block_r, num_warps = block_size(vocab, 2048), 1, 8
    _sample_kernel[(triton.cdiv(n_rows, block_r),)](
        logits, logits.stride(0), tokens if ids is None else ids.contiguous(), unmask_prob.contiguous(),
        banned.contiguous().view(torch.int8), row_index.contiguous(), rng,
        tokens, conf, entropy if with_entropy else conf,
        n_rows, vocab, mask_id, inv_temperature, top_k if use_topk else 0, top_p,
        HAS_IDS=ids is not None, GREEDY=greedy, USE_TOPK=use_topk, USE_TOPP=use_topp,
        FILTERED=use_topk or use_topp,
        WITH_ENTROPY=with_entropy, BLOCK_R=block_r, BLOCK_V=block_v,
        num_warps=num_warps, **LAUNCH_OPTIONS,
    )
    return tokens, conf, entropy


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sampling: ``(tokens [R] int64, confidence [R] float32, entropy [R] or [0] float32)``.

    ``inv_temperature`` is ``1 / T`` (1 when greedy), rounded to float32 by the kernel like the
    reference's ``torch.tensor(1 / T, dtype=float32)``; ``top_k <= 0`` and ``top_p >= 1`` are off.
    """
    return launch_sample(
        logits, ids, unmask_prob, banned, row_index, rng, mask_id, inv_temperature, greedy,
        top_k, top_p, with_entropy,
    )


@triton_sample.register_fake
def _(logits, ids, unmask_prob, banned, row_index, rng, mask_id, inv_temperature, greedy, top_k, top_p,
      with_entropy):
    rows = logits.shape[0]
    return (
        logits.new_empty(rows, dtype=torch.int64),
        logits.new_empty(rows, dtype=torch.float32),
        logits.new_empty(rows if with_entropy else 0, dtype=torch.float32),
    )
