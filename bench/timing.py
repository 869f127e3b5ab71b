"""Timing primitives: medians over repeats after warm-up, on rotating inputs.

On CUDA each call is bracketed by CUDA events (no host-side clock, no sync inside the loop
except what the timed code does itself); on the CPU by ``time.perf_counter``. Inputs rotate
through a list so that no call finds its input in a cache that the previous call warmed.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

import dbert_kernels as dk

__all__ = [
    "TimedDenoiser",
    "TimingStats",
    "Stopwatch",
    "copy_bandwidth",
    "rotation_count",
    "summarize",
    "synchronize",
    "time_calls",
]

# Bytes of distinct inputs to rotate through: several times the last-level cache of the device
# (H100 L2 = 50 MB, H200 likewise; server CPUs' L3 is tens of MB).
ROTATION_BYTES = {"cuda": 256 << 20, "cpu": 64 << 20}


@dataclass(frozen=True)
class TimingStats:
    """Seconds per call: median, 10th and 90th percentile over ``repeats`` timed calls."""

    median_s: float
    p10_s: float
    p90_s: float
    repeats: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(samples: Sequence[float]) -> TimingStats:
    """Median and 10/90th percentiles (nearest rank) of per-call seconds ``samples``."""
    if not samples:
        raise ValueError("no timing samples: use repeats >= 1")
    ordered = sorted(samples)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))]

    return TimingStats(statistics.median(ordered), rank(0.1), rank(0.9), n)


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Accumulates the time of marked regions without synchronising inside them.

    ``with sw: ...`` times one region (CUDA events on a CUDA device, perf_counter otherwise);
    :meth:`total_s` synchronises once and returns the sum since the last :meth:`reset`.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._events: list[tuple[Any, Any]] = []
        self._host_s = 0.0
        self._start: Any = None

    def reset(self) -> None:
        self._events.clear()
        self._host_s = 0.0

    def __enter__(self) -> Stopwatch:
        if self.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((self._start, end))
        else:
            self._host_s += time.perf_counter() - self._start

    def total_s(self) -> float:
        if self.device.type != "cuda":
            return self._host_s
        synchronize(self.device)
        return sum(a.elapsed_time(b) for a, b in self._events) / 1e3


def rotation_count(bytes_per_input: int, device: torch.device, *, minimum: int = 2, maximum: int = 16) -> int:
    """How many distinct inputs to rotate through so that together they overflow the caches."""
    budget = ROTATION_BYTES.get(device.type, ROTATION_BYTES["cpu"])
    return int(min(maximum, max(minimum, math.ceil(budget / max(1, bytes_per_input)))))


def time_calls(
    fn: Callable[[Any, int], Any],
    inputs: Sequence[Any],
    device: torch.device,
    *,
    warmup: int = 2,
    repeats: int = 10,
) -> TimingStats:
    """Time ``fn(inputs[i % len(inputs)], i)`` for ``repeats`` calls after ``warmup`` calls.

    ``fn`` receives the call index too (use it as a seed / counter offset so no call repeats
    another's work). On CUDA each call is timed with its own pair of CUDA events.
    """
    if not inputs:
        raise ValueError("time_calls needs at least one input")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for i in range(warmup):
        fn(inputs[i % len(inputs)], i)
    synchronize(device)
    samples: list[float] = []
    if device.type == "cuda":
        pairs = []
        for i in range(warmup, warmup + repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(inputs[i % len(inputs)], i)
            end.record()
            pairs.append((start, end))
        synchronize(device)
        samples = [a.elapsed_time(b) / 1e3 for a, b in pairs]
    else:
        for i in range(warmup, warmup + repeats):
            t0 = time.perf_counter()
            fn(inputs[i % len(inputs)], i)
            samples.append(time.perf_counter() - t0)
    return summarize(samples)


def copy_bandwidth(device: torch.device, nbytes: int, *, warmup: int = 2, repeats: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted): the speed of light.

    Copies a ``nbytes`` buffer (random data) into a destination with ``Tensor.copy_``, rotating
    over sources so that the caches do not hold them.
    """
    n = max(1, nbytes // 4)
    count = rotation_count(nbytes, device, maximum=4)
    sources = [torch.rand(n, device=device) for _ in range(count)]
    dest = torch.empty(n, device=device)
    stats = time_calls(lambda src, _i: dest.copy_(src), sources, device, warmup=warmup, repeats=repeats)
    return 2 * n * 4 / stats.median_s


class TimedDenoiser(dk.Denoiser):
    """Wraps a denoiser and accumulates the time of its logits calls in a :class:`Stopwatch`."""

    def __init__(self, inner: dk.Denoiser, device: torch.device) -> None:
        self.inner = inner
        self.vocab_size = inner.vocab_size
        self.watch = Stopwatch(device)
        self.rows_asked = 0

    def logits(self, ids: torch.Tensor, t: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        with self.watch:
            return self.inner.logits(ids, t, rows)
