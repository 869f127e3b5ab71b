"""Find, build on first use, and load the native CPU kernels (``csrc/``, a torch custom-op library).

Order of look-up (the first that applies wins):

1. ``DBERT_NATIVE=0``: the native backend is off (the reference path runs on the CPU).
2. ``DBERT_NATIVE_LIB=/path/libdbert_native.so``: load that library (CTest points it at the one
   its CMake build produced).
3. The build cache ``$DBERT_NATIVE_CACHE`` (an absolute path; default
   ``~/.cache/dbert-kernels/native``), in a folder keyed by a hash of the C++ sources, the torch
   version and the Python version: load the library if it is there, else build it there once
   (CMake against the installed torch) and load it.

The build runs under a file lock that the CMake processes inherit, so a second process waits
until the build is over even when the first one was killed (``kill -9``) mid-build and left CMake
running; each build uses a private build folder and installs the library with one atomic rename.
The loader refuses a cache folder or library that is not owned by the current user or that
others can write to (someone else could swap the library that gets loaded into this process).

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

__all__ = ["load_native_library", "csrc_dir", "cache_root", "cache_dir", "build_native_library", "check_private"]

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


def cache_root() -> Path:
    """``$DBERT_NATIVE_CACHE`` (which must be an absolute path when set) or the default."""
    value = os.environ.get("DBERT_NATIVE_CACHE")
    if value is None:
        return Path.home() / ".cache" / "dbert-kernels" / "native"
    path = Path(value).expanduser()
    if not value.strip() or not path.is_absolute():
        raise RuntimeError(
            f"DBERT_NATIVE_CACHE={value!r} is not an absolute path: unset it (default "
            "~/.cache/dbert-kernels/native) or give an absolute directory"
        )
    return path


def cache_dir(src: Path) -> Path:
    """The folder that holds (or will hold) the library built from ``src``."""
    return cache_root() / _source_hash(src)


def check_private(path: Path) -> None:
    """``path`` is owned by this user and not writable by the group or others (POSIX only)."""
    if not hasattr(os, "getuid"):  # pragma: no cover - non-POSIX
        return
    st = path.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise RuntimeError(
            f"refusing to load native code from {path}: it must be owned by you and not writable by "
            f"the group or others (owner uid {st.st_uid}, mode {oct(st.st_mode & 0o777)}); fix it or "
            "point DBERT_NATIVE_CACHE at a private directory"
        )


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock on ``path``; yields the locked file descriptor (None without fcntl).

    Pass the descriptor to child processes (``pass_fds``): the lock then stays held until the
    last of them exits, even if this process is killed first.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: no lock, builds may race
            yield None
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield handle.fileno()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_native_library(src: Path, out: Path, quiet: bool = False, lock_fd: int | None = None) -> Path:
    """Configure and build ``src`` with CMake into ``out``; returns the library path.

    ``lock_fd``: the descriptor of the build lock, inherited by the CMake processes. Raises
    ``RuntimeError`` (with the log's location) when CMake is missing or the build fails.
    """
    cmake = shutil.which("cmake")
    if cmake is None:
        raise RuntimeError("CMake was not found on PATH (install it, e.g. `pip install cmake`)")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in out.glob("build-*"):  # left by killed builds (their CMake has exited: we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    build = out / f"build-{os.getpid()}"
    log = out / "build.log"
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
            rc = subprocess.run(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, timeout=_BUILD_TIMEOUT_S,
                pass_fds=() if lock_fd is None else (lock_fd,),
            ).returncode
            if rc != 0:
                raise RuntimeError(f"`{' '.join(cmd[:2])} ...` failed (exit {rc}); see {log}")
    built = build / _LIB_NAME
    if not built.is_file():
        raise RuntimeError(f"the build produced no {_LIB_NAME} (no C++ compiler or torch CMake config?); see {log}")
    final = out / _LIB_NAME
    tmp = out / (_LIB_NAME + ".tmp")
    shutil.copy2(built, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, final)  # atomic: other processes never load a half-written file
    shutil.rmtree(build, ignore_errors=True)
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
    if not lib.is_file():
        with _file_lock(out.parent / (out.name + ".lock")) as lock_fd:
            if not lib.is_file():  # else another process built it while we waited
                build_native_library(src, out, lock_fd=lock_fd)
    for path in (out, lib):
        check_private(path)
    return lib


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
