"""Where the Triton tests run: the CPU under the interpreter (small shapes) or a CUDA GPU.

Each Triton-only test is parametrised over :data:`DEVICES`; the ``cpu`` case carries the
``interpreter`` marker and small shapes (the interpreter is slow), the ``cuda`` case the ``cuda``
marker. The suites of every backend use :mod:`tests.backends_under_test` instead.
"""

from __future__ import annotations

import pytest
import torch

from dbert_kernels.backends import available_backends

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.interpreter, id="interp"),
    pytest.param("cuda", marks=pytest.mark.cuda, id="cuda"),
]


def require_triton(device: str) -> torch.device:
    """Skip unless the Triton backend runs on ``device`` here; returns the torch device."""
    pytest.importorskip("triton")
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if "triton" not in available_backends(device):
        pytest.skip(f"the triton backend does not run on {device} here (set TRITON_INTERPRET=1 for the CPU)")
    return torch.device(device)

