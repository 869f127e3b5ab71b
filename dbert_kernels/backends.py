"""Backend registry: which implementation of the three ops runs for a given tensor.

A backend is a module (or object) with the functions ``spindle_mask``, ``sample`` and
``topk_unmask`` of :mod:`dbert_kernels.reference`'s signatures. ``"auto"`` picks the fastest
available backend for the tensors' device: Triton for CUDA tensors, the native C++ kernels for CPU
tensors, and the reference path when neither is available.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

__all__ = ["available_backends", "backend_names", "resolve_backend", "register_backend"]

# name -> (loader returning the module or None if unavailable, devices it supports)
_LOADERS: dict[str, tuple[Callable[[], Any], tuple[str, ...]]] = {}
_CACHE: dict[str, Any] = {}


def register_backend(name: str, loader: Callable[[], Any], devices: tuple[str, ...]) -> None:
    """Register a backend: ``loader()`` returns the implementation (an object with the functions
    ``spindle_mask``, ``sample`` and ``topk_unmask`` of :mod:`dbert_kernels.reference`'s
    signatures), or None when it cannot run here; ``devices``: the device types it takes
    (``"cpu"``, ``"cuda"``). ``backend=name`` then selects it in every op and in ``generate``."""
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"a backend name must be a non-empty string other than 'auto', got {name!r}")
    if isinstance(devices, str) or not devices or not all(isinstance(d, str) for d in devices):
        raise ValueError(f"devices must be a tuple of device types such as ('cpu',), got {devices!r}")
    _LOADERS[name] = (loader, tuple(devices))
    _CACHE.pop(name, None)


def _load(name: str) -> Any:
    if name not in _CACHE:
        _CACHE[name] = _LOADERS[name][0]()
    return _CACHE[name]


def _reference() -> ModuleType:
    return importlib.import_module("dbert_kernels.reference")


def _triton() -> ModuleType | None:
    """The Triton backend, or None when Triton is not installed or has no device to run on."""
    try:
        module = importlib.import_module("dbert_kernels.triton_backend")
    except ImportError:
        return None
    return module if (module.INTERPRETED or torch.cuda.is_available()) else None


def _native() -> Any:
    return importlib.import_module("dbert_kernels.native").load()


register_backend("reference", _reference, ("cpu", "cuda"))
register_backend("native", _native, ("cpu",))
# The Triton kernels run on CUDA; under TRITON_INTERPRET=1 they also accept CPU tensors when asked
# for by name (backend="triton"): "auto" never picks the interpreter, see _AUTO_ORDER.
register_backend(
    "triton", _triton, ("cuda", "cpu") if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else ("cuda",)
)

def backend_names() -> tuple[str, ...]:
    """Names accepted by every ``backend=`` argument: ``"auto"`` and the registered backends."""
    return ("auto", *_LOADERS)


# Preference order of "auto" per device type.
_AUTO_ORDER = {"cuda": ("triton", "reference"), "cpu": ("native", "reference")}


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device`` here (importable, and built where compiled)."""
    dev = torch.device(device).type
    return [n for n, (_, devs) in _LOADERS.items() if dev in devs and _load(n) is not None]


def resolve_backend(backend: str, device: torch.device) -> tuple[str, Any]:
    """The (name, implementation) that runs ``backend`` for tensors on ``device``."""
    if backend not in backend_names():
        raise ValueError(f"backend must be one of {backend_names()}, got {backend!r}")
    dev = device.type
    if backend == "auto":
        for name in _AUTO_ORDER.get(dev, ("reference",)):
            if name in _LOADERS and dev in _LOADERS[name][1] and _load(name) is not None:
                return name, _load(name)
        return "reference", _load("reference")
    if backend not in _LOADERS or _load(backend) is None:
        raise RuntimeError(
            f"backend {backend!r} is not available in this installation "
            f"(available on {dev}: {available_backends(device)}); use backend='auto'"
        )
    if dev not in _LOADERS[backend][1]:
        raise ValueError(
            f"backend {backend!r} does not run on {dev} tensors (it supports "
            f"{_LOADERS[backend][1]}); move the tensors or use backend='auto'"
        )
    return backend, _load(backend)
