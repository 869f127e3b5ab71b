"""Confidence-based top-k unmasking: kernel, launcher and the ``triton_topk_unmask`` op.

One program per row, the row held in registers.

The ``take = min(k[b], #masked)`` best scores are found without sorting: a bisection over the
order-preserving int32 keys of the scores finds the ``take``-th largest key, every eligible
position above it is revealed, and of the positions equal to it the first ones (a prefix sum)
fill the rest, which is the reference's tie-break to the lower position.
"""

# No ``from __future__ import annotations``: torch.library reads the annotations at runtime.

import torch
import triton
import triton.language as tl

from .. import random as rnd
from .launch import LAUNCH_OPTIONS
from .noise import INT32_MAX, INT32_MIN, MAX_SEARCH_STEPS, exponential_from_bits, float_key, philox_block

STREAM_CONFIDENCE = tl.constexpr(rnd.STREAM_CONFIDENCE)
#: Longest row the kernel holds in registers.
MAX_LENGTH = 16384


@triton.jit
def _topk_unmask_kernel(
    ids_ptr, cand_ptr, conf_ptr, k_ptr, rng_ptr, out_ptr,
    length, mask_id, gumbel_temperature,
    USE_GUMBEL: tl.constexpr, BLOCK_L: tl.constexpr,
):
    row = tl.program_id(0)
    base = row.to(tl.int64) * length
    cols = tl.arange(0, BLOCK_L)
    inb = cols < length
    ids = tl.load(ids_ptr + base + cols, mask=inb, other=0)
    eligible = inb & (ids.to(tl.int64) == mask_id)
    conf = tl.load(conf_ptr + base + cols, mask=eligible, other=1.0)
    if USE_GUMBEL:
        seed = tl.load(rng_ptr)
        offset = tl.load(rng_ptr + 1)
        w0, w1, w2, w3 = philox_block(seed, cols, row, STREAM_CONFIDENCE, offset)
        score = tl.log(conf) + gumbel_temperature * (-tl.log(exponential_from_bits(w0, w1)))
    else:
        score = conf
    key = float_key(score)
    n_eligible = tl.sum(eligible.to(tl.int32), axis=0)
    take = tl.minimum(tl.load(k_ptr + row), n_eligible.to(tl.int64)).to(tl.int32)
    # the take-th largest key: the largest key v with #(key >= v) >= take
    lo = tl.min(tl.where(eligible, key, INT32_MAX), axis=0)
    hi = tl.where(take > 0, tl.max(tl.where(eligible, key, INT32_MIN), axis=0), lo)
    steps = 0
    while (lo < hi) & (steps < MAX_SEARCH_STEPS):
        pivot = (lo.to(tl.int64) + ((hi.to(tl.int64) - lo.to(tl.int64) + 1) >> 1)).to(tl.int32)
        ge = eligible & (key >= pivot)
        count = tl.sum(ge.to(tl.int32), axis=0)
        above = tl.min(tl.where(ge, key, INT32_MAX), axis=0)
        below = tl.max(tl.where(eligible & (key < pivot), key, INT32_MIN), axis=0)
        enough = count >= take
        lo = tl.where(enough, above, lo)
        hi = tl.where(enough, tl.where(count == take, above, hi), below)
        steps += 1
    greater = eligible & (key > lo)
    tied = eligible & (key == lo)
    room = take - tl.sum(greater.to(tl.int32), axis=0)
    rank = tl.cumsum(tied.to(tl.int32), axis=0)
    reveal = (take > 0) & (greater | (tied & (rank <= room)))
    cand = tl.load(cand_ptr + base + cols, mask=inb, other=0)
    tl.store(out_ptr + base + cols, tl.where(reveal, cand.to(ids.dtype), ids), mask=inb)


def launch_topk_unmask(
    ids: torch.Tensor,
    candidates: torch.Tensor,
    confidence: torch.Tensor,
    k: torch.Tensor,
    rng: torch.Tensor,
    mask_id: int,
    gumbel_temperature: float,
) -> torch.Tensor:
    """Launch the unmasking kernel; see :func:`dbert_kernels.reference.topk_unmask`.

    ``ids``/``candidates`` [B, L] int, ``confidence`` [B, L] float32, ``k`` [B] int64, ``rng`` [2]
    int64 (seed bits, offset). Returns new ids [B, L] (``ids``' dtype).
    """
    batch, length = ids.shape
    if length > MAX_LENGTH:
        raise ValueError(
            f"the Triton top-k unmasking handles rows of up to {MAX_LENGTH} positions, got {length}; "
            "use backend='reference' for longer rows"
        )
    ids = ids.contiguous()
    out = torch.empty_like(ids)
    if ids.numel() == 0:
        return out
    block = max(16, triton.next_power_of_2(length))
    _topk_unmask_kernel[(batch,)](
        ids, candidates.contiguous(), confidence.contiguous(), k.contiguous(), rng, out,
        length, mask_id, gumbel_temperature,
        USE_GUMBEL=gumbel_temperature > 0, BLOCK_L=block,
        num_warps=4 if block <= 2048 else 8, **LAUNCH_OPTIONS,
    )
    return out


#: The launcher as the ``torch.library`` op ``dbert_kernels::triton_topk_unmask``.
triton_topk_unmask = torch.library.custom_op("dbert_kernels::triton_topk_unmask", mutates_args=())(
    launch_topk_unmask
)


@triton_topk_unmask.register_fake
def _(ids, candidates, confidence, k, rng, mask_id, gumbel_temperature):
    return torch.empty_like(ids)
