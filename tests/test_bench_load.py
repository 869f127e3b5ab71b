"""python -m bench: the load average of each timed cell, the busy mark, the thread line, the default output."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

import bench.__main__ as bench_main
from bench import report
from dbert_kernels import threads

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _run_kernels(tmp_path, monkeypatch, capsys, load: float) -> tuple[dict, str, str]:
    monkeypatch.setattr(report, "load_average", lambda: [load, load, load])
    monkeypatch.setattr(threads, "load_average", lambda: load)
    res = bench_main.main(["--device", "cpu", "--quick", "--only", "kernels", "--backends", "reference",
                           "--out", str(tmp_path), "--no-progress"])
    out, err = capsys.readouterr()
    md = next(tmp_path.glob("*.md")).read_text()
    assert json.loads(next(tmp_path.glob("*.json")).read_text())["kernels"]["results"] == res["kernels"]["results"]
    return res, md, err


def test_cells_measured_above_the_core_count_are_marked(tmp_path, monkeypatch, capsys, restore_threads) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    busy = threads.available_cores() + 3.0
    res, md, err = _run_kernels(tmp_path, monkeypatch, capsys, busy)
    cells = res["kernels"]["results"]
    assert cells and all(c["load_before"] == c["load_after"] == busy and c["overloaded"] for c in cells)
    assert md.count(report.BUSY_MARK) == len(cells) + 1  # each cell and the note explaining the mark
    assert f"{len(cells)} of {len(cells)} cells measured while the load average exceeded" in md
    assert "bench: 1 torch thread(s)" in err  # the quick grid's ops are too small to share
    assert err.count("warning: the load average exceeds the core count") == 1


def test_cells_of_an_idle_machine_are_not_marked(tmp_path, monkeypatch, capsys, restore_threads) -> None:
    res, md, err = _run_kernels(tmp_path, monkeypatch, capsys, 0.0)
    cells = res["kernels"]["results"]
    assert cells and not any(c["overloaded"] for c in cells) and all(c["load_before"] == 0.0 for c in cells)
    assert report.BUSY_MARK not in md and "warning" not in err and "torch thread(s)" in err
    assert res["environment"]["native"].startswith("dbert_native")  # the ISA the CPU numbers depend on
    assert "- native kernels: dbert_native" in md


def test_threads_flag_wins(tmp_path, monkeypatch, capsys, restore_threads) -> None:
    monkeypatch.setattr(report, "load_average", lambda: [0.0, 0.0, 0.0])
    bench_main.main(["--device", "cpu", "--quick", "--only", "kernels", "--backends", "reference", "--threads", "2",
                     "--out", str(tmp_path), "--no-progress"])
    assert "bench: 2 torch thread(s)" in capsys.readouterr().err and torch.get_num_threads() == 2


def test_default_output_is_git_ignored_and_not_the_committed_results() -> None:
    for default in (bench_main.DEFAULT_OUT, bench_main.DEFAULT_OUT / "quick"):
        assert ROOT / "bench" / "results" not in (default, *default.parents)
        probe = default / "cpu.json"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(probe.relative_to(ROOT))], cwd=ROOT, timeout=30)
        assert ignored.returncode == 0, f"{probe} is not git-ignored"
    from bench.paper import __main__ as paper_main

    assert ROOT / "bench" / "results" not in paper_main.RESULTS.parents and paper_main.RESULTS != ROOT / "bench" / "results"


def test_work_size_of_the_grids() -> None:
    from bench.configs import config_for

    assert bench_main.work_elements(config_for("cpu", quick=True)) < threads.SMALL_WORK_ELEMENTS
    assert bench_main.work_elements(config_for("cpu")) >= threads.SMALL_WORK_ELEMENTS


def test_the_index_writer_leaves_a_hand_written_index_alone(tmp_path):
    from bench.report import INDEX_MARK, write_index

    written = write_index(tmp_path)
    assert written is not None and INDEX_MARK in written.read_text()
    assert write_index(tmp_path) == written  # its own index: rewritten
    written.write_text("# curated index\n")
    assert write_index(tmp_path) is None and written.read_text() == "# curated index\n"
    committed = Path(__file__).resolve().parents[1] / "bench" / "results" / "README.md"
    assert INDEX_MARK not in committed.read_text()  # python -m bench --out bench/results keeps it
