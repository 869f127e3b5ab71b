"""The backends that the equivalence suite compares against the reference.

Adding a backend to the suite is one line in :data:`BACKENDS_UNDER_TEST`: its name and the
pytest marker that selects its CTest suite. A backend that is not available here (not built, no
device) is skipped, unless ``DBERT_REQUIRE_BACKENDS`` names it (CTest's native suite does), in
which case its absence fails the run instead of passing silently.
"""

from __future__ import annotations

import os

import pytest
import torch

from dbert_kernels import available_backends

#: (backend name, marker) pairs; the marker selects the CTest suite that runs them.
BACKENDS_UNDER_TEST: list[tuple[str, str]] = [
    ("native", "native"),
    ("triton", "interpreter"),
]


def backend_params() -> list:
    """``pytest.param`` objects for ``@pytest.mark.parametrize("backend", ...)``."""
    return [pytest.param(name, marks=getattr(pytest.mark, marker), id=name) for name, marker in BACKENDS_UNDER_TEST]


def require_backend(name: str, device: str = "cpu") -> None:
    """Skip (or fail, when required) unless backend ``name`` runs on ``device`` here."""
    if name in available_backends(torch.device(device)):
        return
    required = {n.strip() for n in os.environ.get("DBERT_REQUIRE_BACKENDS", "").split(",") if n.strip()}
    message = f"backend {name!r} is not available on {device} here"
    if name in required:
        pytest.fail(message + " but DBERT_REQUIRE_BACKENDS requires it")
    pytest.skip(message)
