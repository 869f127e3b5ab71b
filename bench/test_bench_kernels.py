"""pytest-benchmark suite of the ops, collected only when asked for explicitly:

    python -m pytest bench/ --benchmark-only            # on the CPU: reference (and native)
    python -m pytest bench/ --benchmark-only --benchmark-json=out.json

Each available backend of the device (never the Triton interpreter) is timed on rotating inputs;
on CUDA each call synchronises so that the timer sees the kernel's whole time. ``python -m bench``
prints the full table with bandwidths; this suite is for pytest-benchmark's comparisons
(``--benchmark-compare``) between commits.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from bench import kernels
from bench.configs import config_for
from bench.timing import rotation_count, synchronize

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CFG = config_for(DEVICE.type, quick=DEVICE.type == "cpu").kernels
CASES = kernels.kernel_cases(CFG)
BACKENDS = kernels.timed_backends(DEVICE)


def _case_id(case: kernels.KernelCase) -> str:
    return f"{case.op}-{case.variant}-{case.rows}x{case.vocab}-{case.dtype}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_op(benchmark, case: kernels.KernelCase, backend: str) -> None:
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    inputs = [kernels._make_input(case, DEVICE, gen) for _ in range(rotation_count(kernels.bytes_moved(case), DEVICE))]
    call = kernels._caller(case, DEVICE, backend)
    counter = itertools.count()

    def once() -> None:
        i = next(counter)
        call(inputs[i % len(inputs)], i)
        synchronize(DEVICE)

    benchmark.extra_info.update(bytes=kernels.bytes_moved(case), backend=backend)
    benchmark.pedantic(once, rounds=CFG.repeats, warmup_rounds=CFG.warmup, iterations=1)
