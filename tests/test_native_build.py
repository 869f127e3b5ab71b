"""Loading the native kernels: auto-selection on the CPU, and the fallback when they cannot load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dbert_kernels.backends import resolve_backend
from tests.backends_under_test import require_backend

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import warnings, torch
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import dbert_kernels as dk
    names = dk.available_backends("cpu")
    tok, _ = dk.sample(torch.randn(3, 200), seed=1)
    tok2, _ = dk.sample(torch.randn(3, 200), seed=1)
    ref, _ = dk.sample(torch.randn(3, 200), seed=1, backend="reference")
native_warnings = [w for w in caught if "native CPU kernels unavailable" in str(w.message)]
print(names, len(native_warnings), tok.shape[0])
"""


def _probe(env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBERT_NATIVE")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_unloadable_library_falls_back_with_one_warning() -> None:
    assert _probe({"DBERT_NATIVE_LIB": "/nonexistent/libdbert_native.so"}) == "['reference'] 1 3"


def test_disabled_native_is_silent() -> None:
    assert _probe({"DBERT_NATIVE": "0"}) == "['reference'] 0 3"


@pytest.mark.native
def test_auto_picks_native_for_cpu_tensors() -> None:
    require_backend("native")
    from dbert_kernels import native

    assert resolve_backend("auto", torch.device("cpu"))[0] == "native"
    assert native.build_info().startswith("dbert_native: kernels for ")


@pytest.mark.native
def test_native_rejects_cuda_only_requests() -> None:
    require_backend("native")
    with pytest.raises(ValueError, match="does not run on cuda"):
        resolve_backend("native", torch.device("cuda"))
