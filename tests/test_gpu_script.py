"""``bash bench/gpu.sh``: its plan (``--dry-run``) and a rehearsal of every part on the CPU.

The GPU machines that run the script have no matplotlib, no pytest-xdist and no network, and
are lent rarely, for minutes: ``--rehearse`` runs each part's Python entry through the same
imports and code paths on the CPU (Triton interpreter, tiny sizes), here with matplotlib and
xdist made unimportable, so that a mistake shows up here and not on the GPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu.sh"
PARTS = ["environment", "cuda-tests", "kernel-timings", "traffic", "end-to-end", "tradeoff"]
SLACK_S = 20


def _plan(*flags: str, env: dict | None = None) -> tuple[str, list[tuple[str, str, str]], int]:
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", *flags], capture_output=True, text=True, timeout=60,
                         env=env)
    assert out.returncode == 0, out.stderr
    parts = re.findall(r"^\s+(\S+)\s+(\d+) s\s+(.+)$", out.stdout, flags=re.M)
    total = int(re.search(r"total budget (\d+) s", out.stdout).group(1))
    return out.stdout, parts, total


def test_dry_run_prints_the_plan_with_slack() -> None:
    stdout, parts, total = _plan()
    assert [p[0] for p in parts] == PARTS
    cmds = dict((p[0], p[2]) for p in parts)
    assert "-m cuda" in cmds["cuda-tests"] and "tests/test_gpu_smoke.py" in cmds["cuda-tests"]
    assert "bench.kernels" in cmds["kernel-timings"] and "bench.traffic" in cmds["traffic"]
    assert "--only e2e" in cmds["end-to-end"] and "--only tradeoff" in cmds["tradeoff"]
    assert "-n " not in cmds["cuda-tests"]  # no pytest-xdist on the GPU machines
    assert sum(int(p[1]) for p in parts) <= total - SLACK_S and total <= 480
    assert "results in bench/results" in stdout


def test_dry_run_of_the_rehearsal_is_small_and_on_the_cpu() -> None:
    stdout, parts, total = _plan("--rehearse")
    assert [p[0] for p in parts] == PARTS
    assert sum(int(p[1]) for p in parts) <= total - SLACK_S and total < 180
    cmds = dict((p[0], p[2]) for p in parts)
    assert "-m interpreter" in cmds["cuda-tests"]
    assert "--device cpu" in cmds["kernel-timings"] and "--device cpu" in cmds["end-to-end"]
    assert "bench/results" not in stdout


def test_budgets_that_leave_no_slack_are_refused() -> None:
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "GPU_TOTAL_S": "450"})
    assert out.returncode != 0 and "leave less than" in out.stderr


def test_unknown_argument_is_refused() -> None:
    out = subprocess.run(["bash", str(SCRIPT), "--fast"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 64 and "usage" in out.stderr


@pytest.fixture
def gpu_machine_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a GPU machine: matplotlib and pytest-xdist cannot be imported."""
    shadow = tmp_path / "shadow"
    for name in ("matplotlib", "xdist"):
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed (test shadow)')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GPU_TOTAL_S", "GPU_JOBS", "TRADEOFF_RUNS")}
    env.update(PYTHON=sys.executable, PYTHONPATH=os.pathsep.join([str(shadow), str(ROOT)]),
               PYTEST_ADDOPTS="-p no:xdist", GPU_OUT=str(tmp_path / "out"))
    return env


def test_rehearsal_runs_every_part_without_matplotlib_or_xdist(tmp_path: Path, gpu_machine_env: dict) -> None:
    check = subprocess.run([sys.executable, "-c", "import matplotlib"], env=gpu_machine_env, capture_output=True)
    assert check.returncode != 0  # the shadow works
    start = time.perf_counter()
    out = subprocess.run(["bash", str(SCRIPT), "--rehearse"], capture_output=True, text=True, timeout=300,
                         env=gpu_machine_env, cwd=tmp_path)
    elapsed = time.perf_counter() - start
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    assert "failed: none" in out.stdout and "skipped: none" in out.stdout
    results = tmp_path / "out"
    for name in ("triton_kernels_cpu_interpreter.md", "triton_kernels_cpu_interpreter.json", "cpu-e2e.md",
                 "cpu-e2e.json", "README.md", "gpu_rehearse_cpu.txt"):
        assert (results / name).is_file(), name
    assert not (results / "cpu-e2e.png").exists()
    assert "matplotlib is not installed" in log
    assert "| sample 3x300 bfloat16 T=1 |" in (results / "triton_kernels_cpu_interpreter.md").read_text()
    assert "| reference |" in (results / "cpu-e2e.md").read_text()
    assert re.search(r"tests/test_gpu_smoke.py::test_generate_triton_equals_reference PASSED", out.stdout)
    assert len(re.findall(r"test_gpu_smoke.py::.+ PASSED", out.stdout)) == 6
    assert "launch 0:" in out.stdout and "tradeoff: set TRADEOFF_RUNS" in out.stdout
    assert elapsed < 170
