"""The native build cache: where it may live, who may own it, and builds killed half-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dbert_kernels import _native_build as nb

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", ["", "   ", "relative/cache"])
def test_cache_must_be_an_absolute_path(monkeypatch, value):
    monkeypatch.setenv("DBERT_NATIVE_CACHE", value)
    with pytest.raises(RuntimeError, match="DBERT_NATIVE_CACHE.*absolute"):
        nb.cache_root()


def _fake_library(root: Path, mode: int) -> Path:
    out = root / nb._source_hash(nb.csrc_dir())
    out.mkdir(parents=True)
    lib = out / nb._LIB_NAME
    lib.write_bytes(b"not a library")
    os.chmod(lib, 0o755)
    os.chmod(out, mode)
    return out


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_loader_refuses_a_cache_others_can_write(monkeypatch, tmp_path, mode):
    _fake_library(tmp_path, mode)
    monkeypatch.setenv("DBERT_NATIVE_CACHE", str(tmp_path))
    monkeypatch.delenv("DBERT_NATIVE_LIB", raising=False)
    with pytest.raises(RuntimeError, match="refusing to load"):
        nb._locate_or_build()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown needs root")
def test_loader_refuses_a_cache_owned_by_someone_else(monkeypatch, tmp_path):
    out = _fake_library(tmp_path, 0o755)
    os.chown(out, 12345, 12345)
    monkeypatch.setenv("DBERT_NATIVE_CACHE", str(tmp_path))
    monkeypatch.delenv("DBERT_NATIVE_LIB", raising=False)
    with pytest.raises(RuntimeError, match="owned by you"):
        nb._locate_or_build()


_FAKE_CMAKE = """#!/bin/sh
# configure: instant; build: log start/end around a sleep (a slow compiler), then a library
case "$*" in
  *--build*)
    echo "start $(date +%s.%N)" >> "$FAKE_CMAKE_LOG"
    sleep 3
    echo "end $(date +%s.%N)" >> "$FAKE_CMAKE_LOG"
    dir=$(echo "$*" | sed 's/.*--build \\([^ ]*\\).*/\\1/')
    mkdir -p "$dir" && echo lib > "$dir/libdbert_native.so" ;;
esac
exit 0
"""

_BUILDER = textwrap.dedent(
    """
    from dbert_kernels import _native_build as nb
    print(nb._locate_or_build(), flush=True)
    """
)


def test_killed_build_keeps_the_next_one_waiting(tmp_path):
    """kill -9 of the building process while CMake runs: a second process must not start its
    own CMake in that folder until the orphaned one has finished (the lock is inherited)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cmake = bin_dir / "cmake"
    cmake.write_text(_FAKE_CMAKE)
    cmake.chmod(0o755)
    log = tmp_path / "cmake.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBERT_NATIVE")}
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}", DBERT_NATIVE_CACHE=str(tmp_path / "cache"), FAKE_CMAKE_LOG=str(log),
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
    )
    first = subprocess.Popen([sys.executable, "-c", _BUILDER], env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (log.exists() and "start" in log.read_text()):
        assert time.monotonic() < deadline and first.poll() is None, "the first build never started"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    second = subprocess.run([sys.executable, "-c", _BUILDER], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().endswith(nb._LIB_NAME)
    events = [line.split() for line in log.read_text().splitlines()]
    assert [e[0] for e in events] == ["start", "end", "start", "end"], events
    assert float(events[2][1]) >= float(events[1][1])  # the second build began after the orphan ended
