"""dbert_kernels.threads: the default thread count from the free cores and the work size."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import dbert_kernels
from dbert_kernels import threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("cores", "load", "expected"), [
    (2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 4.0, 1), (2, 7.0, 1),
    (8, 2.2, 6), (8, 0.0, 8), (1, 0.0, 1), (4, float("nan"), 4),
])
def test_one_thread_per_core_left_free_by_the_load(cores, load, expected) -> None:
    assert threads.default_threads(cores=cores, load=load) == expected


def test_small_work_gets_one_thread_whatever_the_load() -> None:
    small, large = threads.SMALL_WORK_ELEMENTS - 1, threads.SMALL_WORK_ELEMENTS
    assert threads.default_threads(small, cores=8, load=0.0) == 1
    assert threads.default_threads(large, cores=8, load=0.0) == 8
    assert threads.default_threads(16 * 4096, cores=2, load=0.0) == 1  # the quick bench's sampling op


def test_overloaded_compares_the_load_with_the_cores() -> None:
    assert threads.overloaded(cores=2, load=4.0) and not threads.overloaded(cores=2, load=1.9)
    assert 1 <= threads.available_cores() <= (os.cpu_count() or 1)


def test_explicit_count_wins_then_omp_num_threads(monkeypatch, restore_threads) -> None:
    monkeypatch.setattr(threads, "default_threads", lambda work=None: 1)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.use_default_threads(None) == 1
    assert threads.use_default_threads(2) == 2 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.use_default_threads(None) == 2  # kept: the policy is not applied over the user's choice
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        threads.use_default_threads(0)


def test_importing_the_library_does_not_change_the_thread_count() -> None:
    code = ("import torch; torch.set_num_threads(3); import dbert_kernels, dbert_kernels.threads; "
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "3"


def test_dbert_applies_the_policy_and_honours_threads(monkeypatch, restore_threads) -> None:
    from dbert_model import cli

    seen: list[int | None] = []
    monkeypatch.setattr(dbert_kernels, "use_default_threads",
                        lambda explicit=None, work_elements=None: seen.append(explicit))
    # an unknown --device fails in the subcommand, after the thread count is set
    assert cli.main(["--threads", "1", "eval", "--device", "nonsense"]) == 2
    assert cli.main(["eval", "--device", "nonsense"]) == 2
    assert seen == [1, None]
    with pytest.raises(SystemExit) as exc:
        cli.main(["--threads", "0", "eval"])
    assert exc.value.code == 2
