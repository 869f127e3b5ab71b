"""The Triton backend: fused kernels for the three ops (CUDA, or the CPU under the interpreter).

One module per op holds its kernel, launcher and ``torch.library`` custom op
(``torch.ops.dbert_kernels.triton_*``): :mod:`.masking`, :mod:`.sampling`, :mod:`.unmask`;
:mod:`.noise` has the jit helpers they share (Philox, float conversions, order-preserving keys)
and :mod:`.launch` the launch settings. This module is the backend adapter: the functions below
have the signatures and semantics of :mod:`dbert_kernels.reference` (validated inputs; seeds and
offsets as Python ints or tensors) and call the custom ops. Importing it imports Triton
(``import dbert_kernels`` does not: the backend registry loads it on first use).
"""

from __future__ import annotations

import torch

from ..params import SamplingParams
from ..random import rng_tensor
from .launch import INTERPRETED
from .masking import FORMS, triton_spindle_mask
from .sampling import triton_sample
from .unmask import triton_topk_unmask

__all__ = ["spindle_mask", "sample", "topk_unmask", "INTERPRETED", "rng_tensor"]


def spindle_mask(
    ids: torch.Tensor,
    base: torch.Tensor,
    amp: torch.Tensor,
    info: torch.Tensor,
    protected: torch.Tensor,
    form: str,
    mask_id: int,
    seed: int | torch.Tensor,
    offset: int | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-process masking of ``ids`` ``[B, L]``; returns (noised ids, bool mask)."""
    rng = rng_tensor(seed, offset, ids.device)
    return triton_spindle_mask(ids, base, amp, info, protected, rng, FORMS[form], mask_id)


def sample(
    logits: torch.Tensor,
    ids: torch.Tensor | None,
    unmask_prob: torch.Tensor,
    row_index: torch.Tensor,
    mask_id: int,
    params: SamplingParams,
    seed: int | torch.Tensor,
    offset: int | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Absorbing-state categorical sampling: ``(tokens, confidence, entropy or None, margin or None)``."""
    rng = rng_tensor(seed, offset, logits.device)
    tokens, conf, entropy, margin = triton_sample(
        logits, ids, unmask_prob, params.banned, row_index, rng, mask_id, params.inv_temperature,
        params.greedy, params.top_k, params.top_p, params.with_entropy, params.with_margin,
    )
    return tokens, conf, entropy if params.with_entropy else None, margin if params.with_margin else None


def topk_unmask(
    ids: torch.Tensor,
    candidates: torch.Tensor,
    confidence: torch.Tensor,
    k: torch.Tensor,
    mask_id: int,
    gumbel_temperature: float,
    seed: int | torch.Tensor,
    offset: int | torch.Tensor,
) -> torch.Tensor:
    """Reveal the ``k[b]`` most confident masked positions of each row; returns new ids [B, L]."""
    rng = rng_tensor(seed, offset, ids.device)
    return triton_topk_unmask(
        ids, candidates, confidence, k.to(torch.int64), rng, mask_id, float(gumbel_temperature)
    )
