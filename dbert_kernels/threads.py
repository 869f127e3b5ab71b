"""How many CPU threads torch should use on this machine, now.

torch starts with one OpenMP thread per core and splits every op of more than 32768 elements
between them. Each such op ends in a barrier where the calling thread waits for the others. On a
machine whose cores are taken by other processes, a worker thread is often not running when its
share of an op is ready: the op then lasts until the scheduler gives it a time slice (milliseconds),
however small the op. The sampling ops are hundreds of small element-wise ops per call, so on a
busy 2-core machine two threads make them tens of times slower than one.

The policy of :func:`default_threads`:

* the cores this process may use (``os.sched_getaffinity``) minus the 1-minute load average of
  the machine, rounded, at least 1 and at most the core count;
* 1 thread where the work of one op (``work_elements``) is too small to gain from sharing
  (below :data:`SMALL_WORK_ELEMENTS`), whatever the load.

:func:`use_default_threads` applies it (``torch.set_num_threads``) unless the user chose a count:
an explicit value, or ``OMP_NUM_THREADS`` in the environment. Importing :mod:`dbert_kernels`
never changes the thread count; the ``dbert`` command and ``python -m bench`` call
:func:`use_default_threads` once at start.
"""

from __future__ import annotations

import math
import os

__all__ = ["SMALL_WORK_ELEMENTS", "available_cores", "load_average", "overloaded", "default_threads",
           "use_default_threads"]

#: Elements per op below which one thread is used: an element-wise op on 2**20 float32 values
#: takes about a millisecond on one core, the order of one scheduler time slice lost at a barrier.
SMALL_WORK_ELEMENTS = 1 << 20


def available_cores() -> int:
    """The number of CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where
    the platform has no affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_average() -> float | None:
    """The machine's 1-minute load average (runnable processes), or None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def overloaded(cores: int | None = None, load: float | None = None) -> bool:
    """Whether the load average exceeds the core count (timings taken now are unreliable)."""
    cores = available_cores() if cores is None else cores
    load = load_average() if load is None else load
    return load is not None and load > cores


def default_threads(work_elements: int | None = None, *, cores: int | None = None,
                    load: float | None = None) -> int:
    """The thread count for torch on this machine now.

    Args:
        work_elements: elements of one typical op of the coming work; below
            :data:`SMALL_WORK_ELEMENTS` the answer is 1. None: unknown (only the load counts).
        cores: the usable cores (default :func:`available_cores`).
        load: the load average (default :func:`load_average`; where there is none, no load).

    Returns:
        ``round(cores - load)`` clipped to ``[1, cores]``; 1 for small work.
    """
    cores = available_cores() if cores is None else cores
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    if work_elements is not None and work_elements < SMALL_WORK_ELEMENTS:
        return 1
    load = load_average() if load is None else load
    if load is None or not math.isfinite(load):
        load = 0.0
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def use_default_threads(explicit: int | None = None, work_elements: int | None = None) -> int:
    """Set torch's intra-op thread count once, at the start of a command; returns the count in use.

    ``explicit`` (a ``--threads`` value) wins; else ``OMP_NUM_THREADS`` in the environment is kept
    (torch has read it); else :func:`default_threads` is applied.

    Raises:
        ValueError: ``explicit`` is below 1.
    """
    import torch

    if explicit is not None:
        if explicit < 1:
            raise ValueError(f"--threads must be >= 1, got {explicit}")
        torch.set_num_threads(explicit)
    elif not os.environ.get("OMP_NUM_THREADS", "").strip():
        torch.set_num_threads(default_threads(work_elements))
    return torch.get_num_threads()
