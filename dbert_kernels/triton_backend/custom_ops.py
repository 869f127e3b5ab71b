"""The kernels as PyTorch custom ops (``torch.ops.dbert_kernels.triton_*``).

Registered with :mod:`torch.library` (with fake implementations for shape propagation), so that
``torch.compile`` treats each kernel as one opaque op and a whole sampling step can be captured in
a CUDA graph. The Philox key and counter offset are a tensor ``rng = [seed bits, offset]``
(int64 ``[2]``, on the tensors' device, see :func:`~dbert_kernels.triton_backend.launch.rng_tensor`):
bump ``rng[1]`` in place between graph replays instead of passing new Python ints. These ops do
no input validation (use the public ops for that) and never synchronise with the host.
"""

# No ``from __future__ import annotations``: torch.library reads the annotations at runtime.

import torch

from .masking import launch_spindle_mask
from .sampling import launch_sample
from .unmask import launch_topk_unmask

__all__ = ["triton_spindle_mask", "triton_sample", "triton_topk_unmask"]


@torch.library.custom_op("dbert_kernels::triton_spindle_mask", mutates_args=())
def triton_spindle_mask(
    ids: torch.Tensor,
    base: torch.Tensor,
    amp: torch.Tensor,
    info: torch.Tensor,
    protected: torch.Tensor,
    rng: torch.Tensor,
    form: int,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masking: ``(noised ids [B, L], masked [B, L] bool)``; ``form`` 0 none, 1 code, 2 paper."""
    return launch_spindle_mask(ids, base, amp, info, protected, rng, form, mask_id)


@triton_spindle_mask.register_fake
def _(ids, base, amp, info, protected, rng, form, mask_id):
    return torch.empty_like(ids), torch.empty(ids.shape, dtype=torch.bool, device=ids.device)


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


@torch.library.custom_op("dbert_kernels::triton_topk_unmask", mutates_args=())
def triton_topk_unmask(
    ids: torch.Tensor,
    candidates: torch.Tensor,
    confidence: torch.Tensor,
    k: torch.Tensor,
    rng: torch.Tensor,
    mask_id: int,
    gumbel_temperature: float,
) -> torch.Tensor:
    """Top-k unmasking: new ids ``[B, L]`` (``k`` [B] int64, ``confidence`` float32)."""
    return launch_topk_unmask(ids, candidates, confidence, k, rng, mask_id, gumbel_temperature)


@triton_topk_unmask.register_fake
def _(ids, candidates, confidence, k, rng, mask_id, gumbel_temperature):
    return torch.empty_like(ids)
