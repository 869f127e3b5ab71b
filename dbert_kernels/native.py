"""The native backend: the three ops as fused C++ kernels for CPU tensors (``csrc/``).

:func:`load` returns them as a :class:`~dbert_kernels._kernel_backend.KernelBackend`: the
signatures and semantics of :mod:`dbert_kernels.reference` (inputs already validated by
:mod:`dbert_kernels.ops`) and the same Philox draws, so results equal the reference's. The kernels
read each revealed row of logits once per pass in one thread (threads across rows), with
vectorised inner loops (AVX-512 / AVX2 / baseline x86-64 picked at load time), for float32,
bfloat16 and float16 logits. :func:`load` builds the library on first use (see
:mod:`dbert_kernels._native_build`) and returns None when it cannot.
"""

from __future__ import annotations

import torch

from ._kernel_backend import KernelBackend, empty_sample_outputs
from ._native_build import load_native_library

__all__ = ["load", "build_info"]


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
        return empty_sample_outputs(logits, with_entropy, with_margin)

    @torch.library.register_fake("dbert_native::topk_unmask")
    def _(ids, candidates, confidence, k, rng, mask_id, gumbel_temperature):
        return torch.empty_like(ids)


_BACKEND: KernelBackend | None = None


def load() -> KernelBackend | None:
    """The backend when the library is (or can be) built and loaded, else None."""
    global _BACKEND
    if not load_native_library():
        return None
    if _BACKEND is None:
        _register_fake_impls()
        ops = torch.ops.dbert_native
        # The sampling kernel checks every row it reads (rows that are not revealed are not read).
        _BACKEND = KernelBackend(ops.spindle_mask, ops.sample, ops.topk_unmask, checks_logits=True)
    return _BACKEND
