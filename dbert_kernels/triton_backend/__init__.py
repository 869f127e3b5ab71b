"""The Triton backend: fused kernels for the three ops (CUDA, or the CPU under the interpreter).

Importing this package imports Triton (``import dbert_kernels`` does not: the backend registry
loads it on first use). The functions below have the signatures and semantics of
:mod:`dbert_kernels.reference` (validated inputs, Python-int seeds) and run the custom ops of
:mod:`.custom_ops`; use those directly for ``torch.compile`` / CUDA-graph capture with tensor seeds.
"""

from __future__ import annotations

import torch

from ..params import SamplingParams
from ..random import rng_tensor
from . import custom_ops
from .launch import INTERPRETED
from .masking import FORMS

__all__ = ["spindle_mask", "sample", "topk_unmask", "INTERPRETED", "rng_tensor"]


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
    rng = rng_tensor(seed, offset, ids.device)
    return custom_ops.triton_spindle_mask(ids, base, amp, info, protected, rng, FORMS[form], mask_id)


def sample(
    logits: torch.Tensor,
    ids: torch.Tensor | None,
    unmask_prob: torch.Tensor,
    row_index: torch.Tensor,
    mask_id: int,
    params: SamplingParams,
    seed: int,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Absorbing-state categorical sampling: ``(tokens, confidence, entropy or None, None)``."""
    if params.with_margin:
        raise NotImplementedError("the Triton backend does not compute the margin yet")
    rng = rng_tensor(seed, offset, logits.device)
    tokens, conf, entropy = custom_ops.triton_sample(
        logits, ids, unmask_prob, params.banned, row_index, rng, mask_id, params.inv_temperature,
        params.greedy, params.top_k, params.top_p, params.with_entropy,
    )
    return tokens, conf, entropy if params.with_entropy else None, None


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
    rng = rng_tensor(seed, offset, ids.device)
    return custom_ops.triton_topk_unmask(
        ids, candidates, confidence, k.to(torch.int64), rng, mask_id, float(gumbel_temperature)
    )
