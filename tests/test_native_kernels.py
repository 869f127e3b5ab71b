"""The native sampling kernel's fast paths: ISA dispatch, no FMA contraction, the Gumbel bound that
lets it skip Philox, and equality with the reference on the inputs those paths are taken for."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dbert_kernels.random import exponential_from_bits
from tests.backends_under_test import require_backend

ROOT = Path(__file__).resolve().parents[1]
AVX2_SOURCE = ROOT / "csrc" / "row_kernels_avx2.inc"

# The flags a CPU needs for each x86-64 micro-architecture level (GCC's __builtin_cpu_supports).
_V3_FLAGS = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
_V4_FLAGS = _V3_FLAGS | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


def _cpu_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else None


def _run(code: str, **env_extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "DBERT_NATIVE_ISA"}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


_INFO = "from dbert_kernels import native; print(native.build_info())"


@pytest.mark.native
def test_dispatch_picks_the_best_level_of_this_cpu() -> None:
    """With no cap, the kernels of the highest level the CPU supports are the ones in use."""
    require_backend("native")
    flags = _cpu_flags()
    if flags is None or not sys.platform.startswith("linux") or os.uname().machine != "x86_64":
        pytest.skip("needs Linux on x86-64 (/proc/cpuinfo)")
    info = _run(_INFO)
    if _V4_FLAGS <= flags:
        assert "x86-64-v4 (AVX-512)" in info, info
    elif _V3_FLAGS <= flags:
        assert "x86-64-v3 (AVX2)" in info, info
    else:
        assert "baseline" in info, info
    assert "baseline" in _run(_INFO, DBERT_NATIVE_ISA="baseline")


def _native_library() -> Path:
    from dbert_kernels import _native_build

    explicit = os.environ.get("DBERT_NATIVE_LIB")
    if explicit:
        return Path(explicit)
    src = _native_build.csrc_dir()
    assert src is not None
    return _native_build.cache_dir(src) / "libdbert_native.so"


@pytest.mark.native
def test_no_fused_multiply_add_in_the_library() -> None:
    """The reference rounds every float32 product before adding: the x86-64-v3 / v4 kernels, which
    may use FMA instructions, must not contain any (no contraction of a * b + c)."""
    require_backend("native")
    objdump = shutil.which("objdump")
    if objdump is None or os.uname().machine != "x86_64":
        pytest.skip("needs objdump on x86-64")
    lib = _native_library()
    assert lib.is_file(), lib
    text = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True,
                          check=True, timeout=300).stdout
    assert "vpmuludq" in text  # the vectorised Philox is there: the disassembly is the right one
    fused = re.findall(r"\bv?f(?:n?m(?:add|sub)|maddsub|msubadd)\w*", text)
    assert not fused, sorted(set(fused))


def test_gumbel_bound_covers_every_draw() -> None:
    """kGumbelMax bounds g = -log E: E is smallest for the all-zero words (E = 2**-47), and the
    bound leaves a margin far above float32 rounding of the logarithm."""
    source = AVX2_SOURCE.read_text()
    bound = float(re.search(r"constexpr float kGumbelMax = ([0-9.]+)f;", source).group(1))
    zero = torch.zeros(1, dtype=torch.int64)
    e_min = exponential_from_bits(zero, zero)
    assert e_min.item() == 2.0**-47
    g_max = -torch.log(e_min).item()
    assert g_max < bound < g_max + 0.05
    assert (bound - g_max) > 1000 * torch.finfo(torch.float32).eps * bound
    # E grows with the words: the smallest nonzero draws give smaller Gumbel values
    words = torch.tensor([0, 1 << 9, 1 << 20, 1 << 31], dtype=torch.int64)
    e = exponential_from_bits(words[:, None], words[None, :])
    assert bool((e >= e_min).all())
    assert float((-torch.log(e)).max()) == pytest.approx(g_max)


_EQUALITY_PROBE = """
import torch, dbert_kernels as dk
from dbert_kernels import native
print(native.build_info())
gen = torch.Generator().manual_seed(3)
sampled = 0
for vocab in (30522, 1037):
    base = torch.randn(48, vocab, generator=gen)
    scales = torch.tensor([0.3, 3.0, 12.0, 40.0]).repeat(12)[:, None]
    x = base * scales  # from flat to very peaked rows: the bound skips most blocks of the latter
    x[::5, 7] = float("-inf")
    x[1::7, : vocab // 3] = float("-inf")  # fewer finite logits than some top-k values below
    x[2::9] = torch.round(x[2::9])  # ties, at the top-k boundary too
    banned = [0, 5, vocab - 1, vocab // 2]
    for kw in (dict(temperature=1.0), dict(temperature=0.5), dict(temperature=1.7, top_k=30),
               dict(temperature=1.0, top_k=512), dict(temperature=1.0, top_k=min(3000, vocab - 1)),
               dict(temperature=0.9, top_p=0.8), dict(temperature=1.0, top_k=200, top_p=0.95),
               dict(temperature=1.0, top_p=0.999)):
        for seed in (1, 2):
            opts = dict(kw, seed=seed, banned_ids=banned, return_entropy=True, return_margin=True)
            a = dk.sample(x, backend="reference", **opts)
            b = dk.sample(x, backend="native", **opts)
            assert torch.equal(a[0], b[0]), (vocab, kw, seed, (a[0] != b[0]).nonzero())
            for u, v in zip(a[1:], b[1:]):
                torch.testing.assert_close(u, v, rtol=2e-5, atol=1e-6, equal_nan=True)
            sampled += int((a[0] != x.argmax(dim=1)).sum())
print(sampled)
"""


@pytest.mark.native
@pytest.mark.parametrize("level", ["default", "baseline"])
def test_fast_paths_equal_reference(level: str) -> None:
    """Flat and peaked rows (the Philox-skipping bound), top-k with ties and short rows (the
    buffered selection), top-p with and without top-k (the weight threshold in the fused pass),
    entropy and margin, at the CPU's best level and at the baseline one."""
    require_backend("native")
    env = {} if level == "default" else {"DBERT_NATIVE_ISA": level}
    info, sampled = _run(_EQUALITY_PROBE, **env).splitlines()
    assert info.startswith("dbert_native: kernels for "), info
    assert int(sampled) > 400  # of 1536 draws (many from peaked rows): real draws, not only the argmax
