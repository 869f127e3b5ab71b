"""The Triton backend: fused kernels for the three ops (CUDA, or the CPU under the interpreter).

One module per op holds its kernel and its launcher, registered as a ``torch.library`` custom op
(``torch.ops.dbert_kernels.triton_*``): :mod:`.masking`, :mod:`.sampling`, :mod:`.unmask`;
:mod:`.noise` has the jit helpers they share (Philox, float conversions, order-preserving keys)
and :mod:`.launch` the launch settings. This module is the backend: ``spindle_mask``, ``sample``
and ``topk_unmask`` have the signatures and semantics of :mod:`dbert_kernels.reference`
(validated inputs; seeds and offsets as Python ints or tensors) and call the custom ops through
the :class:`~dbert_kernels._kernel_backend.KernelBackend` adapter it shares with the native
backend. Importing it imports Triton (``import dbert_kernels`` does not: the backend registry
loads it on first use).
"""

from __future__ import annotations

from .._kernel_backend import KernelBackend
from ..random import rng_tensor
from .launch import INTERPRETED
from .masking import triton_spindle_mask
from .sampling import triton_sample
from .unmask import triton_topk_unmask

__all__ = ["spindle_mask", "sample", "topk_unmask", "INTERPRETED", "rng_tensor"]

_BACKEND = KernelBackend(triton_spindle_mask, triton_sample, triton_topk_unmask)
spindle_mask = _BACKEND.spindle_mask
sample = _BACKEND.sample
topk_unmask = _BACKEND.topk_unmask
