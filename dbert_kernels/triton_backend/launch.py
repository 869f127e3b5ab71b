"""Launch settings shared by the kernel wrappers."""

from __future__ import annotations

import os

import triton

#: True when kernels run under the Triton interpreter (``TRITON_INTERPRET=1``) on the CPU.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

#: Keyword options of every launch. Fused multiply-add is disabled so that ``a * b + c`` rounds
#: exactly like the reference's separate PyTorch ops (bit-identical masks, noise and scores).
LAUNCH_OPTIONS: dict[str, object] = {"enable_fp_fusion": False}


def block_size(n: int, cap: int) -> int:
    """The power of two covering ``n`` elements, at most ``cap`` (at least 16)."""
    return max(16, min(triton.next_power_of_2(max(n, 1)), cap))

