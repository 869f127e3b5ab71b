"""Spindle masking (the forward process): kernel, launcher and the ``triton_spindle_mask`` op.

One program per row of ids. The custom op ``torch.ops.dbert_kernels.triton_spindle_mask`` (with
a fake implementation for shape propagation) takes the Philox key and offset as a tensor, so that
``torch.compile`` and CUDA graphs capture it without a host synchronisation.
"""

# No ``from __future__ import annotations``: torch.library reads the annotations at runtime.

import torch
import triton
import triton.language as tl

from .. import random as rnd
from ..schedules import SPINDLE_CODE_CLIP
from .launch import LAUNCH_OPTIONS, block_size
from .noise import philox_block, uniform_from_bits

STREAM_MASK = tl.constexpr(rnd.STREAM_MASK)
CODE_CLIP = tl.constexpr(SPINDLE_CODE_CLIP)


@triton.jit
def _spindle_mask_kernel(
    ids_ptr, base_ptr, amp_ptr, info_ptr, protected_ptr, rng_ptr, out_ids_ptr, out_mask_ptr,
    length, mask_id,
    FORM: tl.constexpr, BLOCK_L: tl.constexpr,
):
    row = tl.program_id(0)
    seed = tl.load(rng_ptr)
    offset = tl.load(rng_ptr + 1)
    base = tl.load(base_ptr + row)
    amp = tl.load(amp_ptr + row)
    row_ids = ids_ptr + row.to(tl.int64) * length
    mean = 0.0
    if FORM != 0:
        total = tl.zeros([BLOCK_L], dtype=tl.float32)
        count = tl.zeros([BLOCK_L], dtype=tl.float32)
        for start in range(0, length, BLOCK_L):
            cols = start + tl.arange(0, BLOCK_L)
            inb = cols < length
            tok = tl.load(row_ids + cols, mask=inb, other=0).to(tl.int64)
            valid = inb & (tl.load(protected_ptr + tok, mask=inb, other=1) == 0)
            w = tl.load(info_ptr + tok, mask=valid, other=0.0)
            total += tl.where(valid, w, 0.0)
            count += valid.to(tl.float32)
        mean = tl.sum(total, axis=0) / tl.maximum(tl.sum(count, axis=0), 1.0)
    for start in range(0, length, BLOCK_L):
        cols = start + tl.arange(0, BLOCK_L)
        inb = cols < length
        raw = tl.load(row_ids + cols, mask=inb, other=0)
        tok = raw.to(tl.int64)
        valid = inb & (tl.load(protected_ptr + tok, mask=inb, other=1) == 0)
        if FORM == 0:
            keep = tl.zeros([BLOCK_L], dtype=tl.float32) + base
        else:
            w = tl.load(info_ptr + tok, mask=inb, other=1.0)
            if FORM == 1:
                keep = tl.minimum(tl.maximum(base + amp * (w - mean), 0.0), CODE_CLIP)
            else:
                safe_w = tl.where(valid, w, 1.0)
                keep = tl.minimum(tl.maximum(base - amp * (1.0 - mean / safe_w), 0.0), 1.0)
        keep = tl.where(valid, keep, 1.0)
        w0, w1, w2, w3 = philox_block(seed, cols, row, STREAM_MASK, offset)
        masked = uniform_from_bits(w0) >= keep
        noised = tl.where(masked, mask_id, tok)
        tl.store(out_ids_ptr + row.to(tl.int64) * length + cols, noised.to(raw.dtype), mask=inb)
        tl.store(out_mask_ptr + row.to(tl.int64) * length + cols, masked.to(tl.int8), mask=inb)


def launch_spindle_mask(
    ids: torch.Tensor,
    base: torch.Tensor,
    amp: torch.Tensor,
    info: torch.Tensor,
    protected: torch.Tensor,
    rng: torch.Tensor,
    form: int,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the masking kernel; see :func:`dbert_kernels.reference.spindle_mask`.

    ``ids`` [B, L] int, ``base``/``amp`` [B] float32, ``info`` [V] float32, ``protected`` [V]
    bool, ``rng`` [2] int64 (seed bits, offset) on the same device; ``form`` a code of
    :data:`~dbert_kernels.schedules.SPINDLE_FORM_CODES`.
    """
    ids = ids.contiguous()
    batch, length = ids.shape
    noised = torch.empty_like(ids)
    masked = torch.empty(ids.shape, dtype=torch.bool, device=ids.device)
    if ids.numel() == 0:
        return noised, masked
    _spindle_mask_kernel[(batch,)](
        ids, base.contiguous(), amp.contiguous(), info.contiguous(),
        protected.contiguous().view(torch.int8), rng, noised, masked.view(torch.int8),
        length, mask_id,
        FORM=form, BLOCK_L=block_size(length, 1024), **LAUNCH_OPTIONS,
    )
    return noised, masked


#: The launcher as the ``torch.library`` op ``dbert_kernels::triton_spindle_mask``.
triton_spindle_mask = torch.library.custom_op("dbert_kernels::triton_spindle_mask", mutates_args=())(
    launch_spindle_mask
)


@triton_spindle_mask.register_fake
def _(ids, base, amp, info, protected, rng, form, mask_id):
    return torch.empty_like(ids), torch.empty(ids.shape, dtype=torch.bool, device=ids.device)
