"""bench/native_step.py's bookkeeping: where it writes, what it records about the machine, and the
interleaved timing of the samplers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench import native_step

ROOT = Path(__file__).resolve().parents[1]


def test_default_output_is_not_a_committed_result() -> None:
    out = native_step.DEFAULT_OUT.resolve()
    assert ROOT / "bench" / "results" not in out.parents
    rel = out.relative_to(ROOT)
    assert rel.parts[0] == "runs"
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git to check the ignore rules")
    ignored = subprocess.run(["git", "check-ignore", "-q", str(rel)], cwd=ROOT, timeout=60)
    assert ignored.returncode == 0, f"{rel} is not ignored by git"


def test_out_option_overrides_the_default(tmp_path: Path) -> None:
    assert native_step.parse_args(["--quick"]).out == native_step.DEFAULT_OUT
    target = tmp_path / "x.json"
    assert native_step.parse_args(["--out", str(target)]).out == target


def test_interleaved_times_rotates_the_order() -> None:
    calls: list[str] = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = native_step.interleaved_times(fns, 3)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_machine_record_names_the_instruction_set_and_load() -> None:
    machine = native_step._machine()
    assert machine["native"].startswith("dbert_native: ")
    assert len(machine["loadavg_start"]) == 3
    cpu = machine["cpu"]
    assert isinstance(cpu["model"], str) and cpu["model"]
    if Path("/proc/cpuinfo").is_file():
        assert set(cpu["vector_flags"]) == set(native_step.VECTOR_FLAGS)
    header = native_step._header(machine)
    assert machine["native"] in header and "load average at start" in header
