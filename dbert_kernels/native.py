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
from .params import SamplingParams
from .random import SeedLike, rng_tensor
from .schedules import SPINDLE_FORM_CODES

__all__ = ["spindle_mask", "sample", "topk_unmask", "load", "build_info"]

#: The kernel checks every row it reads (NaN / +inf, no finite allowed logit) and raises
#: ValueError, for free; :func:`dbert_kernels.ops.sample_absorbing` then skips its own extra pass.
#: Rows that are not revealed are not read, so they are not checked.
CHECKS_LOGITS = True



def spindle_mask(
    ids: torch.Tensor,
    base: torch.Tensor,
    amp: torch.Tensor,
    info: torch.Tensor,
    protected: torch.Tensor,
    form: str,
    mask_id: int,
    seed: SeedLike,
    offset: SeedLike,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-process masking of ``ids`` ``[B, L]``; returns (noised ids, bool mask)."""
    rng = rng_tensor(seed, offset, ids.device)
    return torch.ops.dbert_native.spindle_mask(ids, base, amp, info, protected, rng, SPINDLE_FORM_CODES[form], mask_id)


def sample(
    logits: torch.Tensor,
    ids: torch.Tensor | None,
    unmask_prob: torch.Tensor,
    row_index: torch.Tensor,
    mask_id: int,
    params: SamplingParams,
    seed: SeedLike,
    offset: SeedLike,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Absorbing-state categorical sampling (see :func:`dbert_kernels.reference.sample`)."""
    rng = rng_tensor(seed, offset, logits.device)
    tokens, conf, entropy, margin = torch.ops.dbert_native.sample(
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
    seed: SeedLike,
    offset: SeedLike,
) -> torch.Tensor:
    """Reveal the ``k[b]`` most confident masked positions of each row; returns new ids [B, L]."""
    rng = rng_tensor(seed, offset, ids.device)
    return torch.ops.dbert_native.topk_unmask(ids, candidates, confidence, k, rng, mask_id, gumbel_temperature)


def build_info() -> str:
    """Which instruction-set level the kernels use and the thread count ("unavailable" if not built)."""
    return torch.ops.dbert_native.build_info() if load_native_library() else "dbert_native: unavailable"


def _register_fake_impls() -> None:
    """Shape-only implementations of the ops, so that ``torch.compile`` traces through them."""

    @torch.library.register_fake("dbert_native::spindle_mask")
    def _(ids, base, amp, info, protected_ids, rng, form, mask_id):
        return torch.empty_like(ids), torch.empty(ids.shape, dtype=torch.bool, device=ids.device)

    @torch.library.register_fake("dbert_native::sample")
    def _(logits, ids, unmask_prob, banned, row_index, rng, mask_id, inv_temperature, greedy, top_k, top_p,
          with_entropy, with_margin):
        rows = logits.shape[0]
        return (
            logits.new_empty(rows, dtype=torch.int64),
            logits.new_empty(rows, dtype=torch.float32),
            logits.new_empty(rows if with_entropy else 0, dtype=torch.float32),
            logits.new_empty(rows if with_margin else 0, dtype=torch.float32),
        )

    @torch.library.register_fake("dbert_native::topk_unmask")
    def _(ids, candidates, confidence, k, rng, mask_id, gumbel_temperature):
        return torch.empty_like(ids)


_FAKES_REGISTERED = False


def load() -> object | None:
    """This module when the library is (or can be) built and loaded, else None."""
    global _FAKES_REGISTERED
    if not load_native_library():
        return None
    if not _FAKES_REGISTERED:
        _register_fake_impls()
        _FAKES_REGISTERED = True
    return sys.modules[__name__]
