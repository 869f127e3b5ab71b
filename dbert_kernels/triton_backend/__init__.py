"""The Triton backend: fused kernels for the three ops (CUDA, or the CPU under the interpreter).

One module per op holds its kernel, launcher and ``torch.library`` custom op
(``torch.ops.dbert_kernels.triton_*``): :mod:`.masking`, :mod:`.sampling`, :mod:`.unmask`;
:mod:`.noise` has the jit helpers they share (Philox, float conversions, order-preserving keys)
and :mod:`.launch` the launch settings. This module is the backend adapter: the functions below
have the signatures and semantics of :mod:`dbert_kernels.reference` (validated inputs) and call
the custom ops. Importing it imports Triton (``import dbert_kernels`` does not: the backend
registry loads it on first use).
"""

from __future__ import annotations

import torch

from .launch import INTERPRETED, rng_tensor
from .masking import FORMS, triton_spindle_mask
from .sampling import triton_sample
from .unmask import triton_topk_unmask

__all__ = ["spindle_mask", "sample", "sample_with_entropy", "topk_unmask", "INTERPRETED", "rng_tensor"]


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
    return triton_spindle_mask(ids, base, amp, info, protected, rng, FORMS[form], mask_id)


def sample_with_entropy(
    logits: torch.Tensor,
    ids: torch.Tensor | None,
    unmask_prob: torch.Tensor,
    banned: torch.Tensor,
    row_index: torch.Tensor,
    mask_id: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int,
    offset: int,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`sample` plus the entropy (nats) of each sampled row's filtered distribution.

    Returns ``(tokens, confidence, entropy)``; the entropy is 0 for rows not sampled (and an
    empty tensor when ``with_entropy`` is False).
    """
    greedy = temperature == 0
    inv_t = 1.0 / (temperature if temperature > 0 else 1.0)
    rng = rng_tensor(seed, offset, logits.device)
    tokens, conf, ent, _ = triton_sample(
        logits, ids, unmask_prob, banned, row_index, rng, mask_id, inv_t, greedy,
        0 if top_k is None else top_k, 1.0 if top_p is None else top_p, with_entropy, False,
    )
    return tokens, conf, ent


def sample(
    logits: torch.Tensor,
    ids: torch.Tensor | None,
    unmask_prob: torch.Tensor,
    banned: torch.Tensor,
    row_index: torch.Tensor,
    mask_id: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorbing-state categorical sampling; returns (tokens [R] int64, confidence [R] float32)."""
    tokens, conf, _ = sample_with_entropy(
        logits, ids, unmask_prob, banned, row_index, mask_id, temperature, top_k, top_p, seed, offset,
        with_entropy=False,
    )
    return tokens, conf


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
    return triton_topk_unmask(
        ids, candidates, confidence, k.to(torch.int64), rng, mask_id, float(gumbel_temperature)
    )
