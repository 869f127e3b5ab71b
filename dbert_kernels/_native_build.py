"""Find, build on first use, and load the native CPU kernels (``csrc/``, a torch custom-op library).

Order of look-up (the first that applies wins):

1. ``DBERT_NATIVE=0``: the native backend is off (the reference path runs on the CPU).
2. ``DBERT_NATIVE_LIB=/path/libdbert_native.so``: load that library (CTest points it at the one
   its CMake build produced).
3. The build cache ``$DBERT_NATIVE_CACHE`` (default ``~/.cache/dbert-kernels/native``), in a
   folder keyed by a hash of the C++ sources, the torch version and the Python version: load the
   library if it is there, else build it there once (CMake against the installed torch, under a
   file lock so that concurrent processes build it once) and load it.

If anything fails (no ``csrc/`` next to the package, no CMake or compiler, a build error), one
warning says why and where the build log is, and :func:`load_native_library` returns None.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import torch

__all__ = ["load_native_library", "csrc_dir", "cache_dir", "build_native_library"]

_LIB_NAME = "libdbert_native.so" if sys.platform != "win32" else "dbert_native.dll"
_BUILD_TIMEOUT_S = 900


def csrc_dir() -> Path | None:
    """The ``csrc/`` folder of the source tree (an editable or source install), or None."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "csrc", here / "csrc"):
        if (candidate / "CMakeLists.txt").is_file():
            return candidate
    return None


def _source_hash(src: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(src.iterdir()):
        if path.suffix in (".cpp", ".h", ".inc", ".txt") and path.is_file():
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    digest.update(torch.__version__.encode())
    digest.update(f"{sys.version_info[:2]}{platform.machine()}".encode())
    return digest.hexdigest()[:16]


def cache_dir(src: Path) -> Path:
    """The folder that holds (or will hold) the library built from ``src``."""
    root = Path(os.environ.get("DBERT_NATIVE_CACHE", Path.home() / ".cache" / "dbert-kernels" / "native"))
    return root / _source_hash(src)


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: no lock, builds may race
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_native_library(src: Path, out: Path, quiet: bool = False) -> Path:
    """Configure and build ``src`` with CMake into ``out``; returns the library path.

    Raises ``RuntimeError`` (with the log's location) when CMake is missing or the build fails.
    """
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError("CMake was not found on PATH (install it, e.g. `pip install cmake`)")
    build = out / "build"
    log = out / "build.log"
    out.mkdir(parents=True, exist_ok=True)
    configure = [cmake, "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DPython3_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    steps = [configure, [cmake, "--build", str(build), "--target", "dbert_native", "-j", jobs]]
    if not quiet:
        print(f"dbert_kernels: building the native CPU kernels once into {out} (about a minute)...",
              file=sys.stderr, flush=True)
    with open(log, "w") as log_file:
        for cmd in steps:
            log_file.write("$ " + " ".join(cmd) + "\n")
            log_file.flush()
            rc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.STDOUT, timeout=_BUILD_TIMEOUT_S).returncode
            if rc != 0:
                raise RuntimeError(f"`{' '.join(cmd[:2])} ...` failed (exit {rc}); see {log}")
    built = build / _LIB_NAME
    if not built.is_file():
        raise RuntimeError(f"the build produced no {_LIB_NAME} (no C++ compiler or torch CMake config?); see {log}")
    final = out / _LIB_NAME
    tmp = out / (_LIB_NAME + ".tmp")
    shutil.copy2(built, tmp)
    os.replace(tmp, final)  # atomic: other processes never load a half-written file
    return final


def _locate_or_build() -> Path | None:
    explicit = os.environ.get("DBERT_NATIVE_LIB")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise RuntimeError(f"DBERT_NATIVE_LIB={explicit} does not exist")
        return path
    src = csrc_dir()
    if src is None:
        raise RuntimeError(
            "the C++ sources (csrc/) are not next to the package: install from a source checkout "
            "(`pip install -e .`) or set DBERT_NATIVE_LIB"
        )
    out = cache_dir(src)
    lib = out / _LIB_NAME
    if lib.is_file():
        return lib
    with _file_lock(out.parent / (out.name + ".lock")):
        if lib.is_file():  # another process built it while we waited
            return lib
        return build_native_library(src, out)


def load_native_library() -> bool:
    """Load the native ops into ``torch.ops.dbert_native``; True on success.

    On failure warns once (the caller caches the result) and returns False.
    """
    if os.environ.get("DBERT_NATIVE", "1").strip().lower() in ("0", "off", "false", "no"):
        return False
    with contextlib.suppress(AttributeError, RuntimeError):
        torch.ops.dbert_native.sample  # noqa: B018 - already loaded in this process
        return True
    try:
        lib = _locate_or_build()
        torch.ops.load_library(str(lib))
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means: fall back, say why once
        warnings.warn(
            f"dbert_kernels: native CPU kernels unavailable ({exc}); CPU tensors use the reference "
            "path (set DBERT_NATIVE=0 to silence this)",
            RuntimeWarning,
            stacklevel=3,
        )
        return False


if __name__ == "__main__":  # `python -m dbert_kernels._native_build`: build now, print the library
    ok = load_native_library()
    print(torch.ops.dbert_native.build_info() if ok else "native kernels unavailable")
    sys.exit(0 if ok else 1)
