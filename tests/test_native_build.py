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
    names = [n for n in dk.available_backends("cpu") if n != "triton"]  # triton: interpreter only
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


_LEVEL_PROBE = """
import torch, dbert_kernels as dk
from dbert_kernels import native
print(native.build_info())
gen = torch.Generator().manual_seed(0)
x = torch.randn(40, 1037, generator=gen) * 3
x[:, 5] = float("-inf")
for kw in (dict(temperature=1.0), dict(temperature=0.0), dict(temperature=0.8, top_k=7),
           dict(temperature=1.2, top_p=0.7), dict(temperature=1.0, top_k=600)):
    for dtype in (torch.float32, torch.bfloat16):
        a = dk.sample(x.to(dtype), seed=5, backend="reference", **kw)
        b = dk.sample(x.to(dtype), seed=5, backend="native", **kw)
        assert torch.equal(a[0], b[0]), (kw, dtype)
        torch.testing.assert_close(a[1], b[1], rtol=2e-5, atol=1e-6)
print("ok")
"""


@pytest.mark.native
@pytest.mark.parametrize("level", ["baseline", "x86-64-v3"])
def test_lower_instruction_set_levels_equal_reference(level: str) -> None:
    """The AVX2 and baseline variants of the kernels (picked on older CPUs) give the same results."""
    require_backend("native")
    env = dict(os.environ, DBERT_NATIVE_ISA=level)
    out = subprocess.run([sys.executable, "-c", _LEVEL_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    info, status = out.stdout.strip().splitlines()
    assert status == "ok"
    if "x86" in info:  # on x86-64 the requested level (or a lower one) is the one in use
        assert ("AVX-512" not in info) and (level != "baseline" or "baseline" in info), info
