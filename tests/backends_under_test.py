"""The backends and devices that the equality and distribution suites compare with the reference.

Adding a backend to the suites is one line in :data:`BACKENDS_UNDER_TEST`: its name and the
pytest marker that selects its CTest suite; :data:`CUDA_BACKENDS` names those that also run on a
CUDA GPU (marker ``cuda``, production shapes: V = 30522, thousands of rows). A backend that is
not available here (not built, no device) is skipped, unless ``DBERT_REQUIRE_BACKENDS`` names it
(CTest's native suite does), in which case its absence fails the run instead of passing silently.
"""

from __future__ import annotations

import os

import pytest
import torch

from dbert_kernels import available_backends

#: (backend name, marker) pairs on the CPU; the marker selects the CTest suite that runs them.
BACKENDS_UNDER_TEST: list[tuple[str, str]] = [
    ("native", "native"),
    ("triton", "interpreter"),
]

#: Backends that also run on a CUDA GPU (marker ``cuda``).
CUDA_BACKENDS: list[str] = ["triton"]


def backend_params() -> list:
    """``pytest.param`` objects for ``@pytest.mark.parametrize("backend", ...)`` (CPU backends)."""
    return [pytest.param(name, marks=getattr(pytest.mark, marker), id=name) for name, marker in BACKENDS_UNDER_TEST]


def backend_device_params(with_reference: bool = False) -> list:
    """``pytest.param`` objects for ``@pytest.mark.parametrize("backend, device", ...)``.

    Every CPU backend on ``cpu`` and every CUDA backend on ``cuda``; ``with_reference`` adds the
    reference backend on the CPU (for tests that check a distribution rather than equality).
    """
    params = [pytest.param("reference", "cpu", id="reference-cpu")] if with_reference else []
    params += [pytest.param(name, "cpu", marks=getattr(pytest.mark, marker), id=f"{name}-cpu")
               for name, marker in BACKENDS_UNDER_TEST]
    params += [pytest.param(name, "cuda", marks=pytest.mark.cuda, id=f"{name}-cuda") for name in CUDA_BACKENDS]
    return params


def require_backend(name: str, device: str = "cpu") -> torch.device:
    """Skip (or fail, when required) unless backend ``name`` runs on ``device`` here.

    Returns the torch device.
    """
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    if name in available_backends(torch.device(device)):
        return torch.device(device)
    required = {n.strip() for n in os.environ.get("DBERT_REQUIRE_BACKENDS", "").split(",") if n.strip()}
    message = f"backend {name!r} is not available on {device} here"
    if name in required:
        pytest.fail(message + " but DBERT_REQUIRE_BACKENDS requires it")
    pytest.skip(message)


def shapes(device: str, cpu: list, cuda: list) -> list:
    """The shape list of a test for ``device``: small and ragged on the CPU, production on CUDA."""
    return cpu if device == "cpu" else cuda
