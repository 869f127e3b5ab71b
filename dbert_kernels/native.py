"""The native backend: the three ops as fused C++ kernels for CPU tensors (``csrc/``).

Same signatures and semantics as :mod:`dbert_kernels.reference` (inputs already validated by
:mod:`dbert_kernels.ops`) and the same Philox draws, so results equal the reference's. The kernels
read each revealed row of logits once per pass in one thread (threads across rows), with
vectorised inner loops (AVX-512 / AVX2 / baseline x86-64 picked at load time), for float32,
bfloat16 and float16 logits. :func:`load` builds the library on first use (see
:mod:`dbert_kernels._native_build`) and returns None when it cannot.
"""

from __future__ import annotations

import sys

import torch

from ._native_build import load_native_library

__all__ = ["spindle_mask", "sample", "topk_unmask", "load", "build_info"]

#: The kernel checks every row it reads (NaN / +inf, no finite allowed logit) and raises
#: ValueError, for free; :func:`dbert_kernels.ops.sample_absorbing` then skips its own extra pass.
#: Rows that are not revealed are not read, so they are not checked.
CHECKS_LOGITS = True

_FORMS = {"none": 0, "code": 1, "paper": 2}
_M32 = 0xFFFFFFFF


def _key(seed: int) -> tuple[int, int]:
    return seed & _M32, (seed >> 32) & _M32


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
    lo, hi = _key(seed)
    return torch.ops.dbert_native.spindle_mask(ids, base, amp, info, protected, _FORMS[form], mask_id, lo, hi, offset)


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
    lo, hi = _key(seed)
    return torch.ops.dbert_native.sample(
        logits, ids, unmask_prob, banned, row_index, mask_id, temperature,
        0 if top_k is None else top_k, 1.0 if top_p is None else top_p, lo, hi, offset,
    )


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
    lo, hi = _key(seed)
    return torch.ops.dbert_native.topk_unmask(ids, candidates, confidence, k, mask_id, gumbel_temperature, lo, hi, offset)


def build_info() -> str:
    """Which instruction-set level the kernels use and the thread count ("unavailable" if not built)."""
    return torch.ops.dbert_native.build_info() if load_native_library() else "dbert_native: unavailable"


def load() -> object | None:
    """This module when the library is (or can be) built and loaded, else None."""
    return sys.modules[__name__] if load_native_library() else None
