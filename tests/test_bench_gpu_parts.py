"""What bench/gpu.sh needs of the Python entries: plots optional, results written as they come."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import e2e, report, tradeoff
from bench.__main__ import main


def _e2e_result(steps: int) -> dict:
    return {"tokens": 16, "batch": 1, "steps": steps, "backend": "reference", "median_s": 0.1, "p10_s": 0.1,
            "p90_s": 0.1, "tokens_per_s": 160.0, "ms_per_step": 100 / steps, "model_share": 0.5, "sampler_share": 0.5}


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> dict:
    """bench.e2e without transformers: two GPT-2 results, then DiffusionBERT results until ``stop``."""
    state = {"stop": None}
    info = {"params": 1, "layers": 1, "hidden": 1, "vocab": 10}
    monkeypatch.setattr(e2e, "build_gpt2", lambda cfg, device: (object(), info))
    monkeypatch.setattr(e2e, "build_bert", lambda cfg, device: (object(), info))

    def gpt_runs(model, cfg, device, variant):
        for n in cfg.tokens:
            for b in cfg.batches:
                yield {"variant": variant, "tokens": n, "batch": b, "median_s": 0.2, "tokens_per_s": 80.0}

    def diffusion_runs(model, cfg, device, backends):
        for i, steps in enumerate(cfg.steps):
            if state["stop"] == i:
                raise KeyboardInterrupt("planted: the run is killed here")
            yield _e2e_result(steps)

    monkeypatch.setattr(e2e, "gpt_runs", gpt_runs)
    monkeypatch.setattr(e2e, "diffusion_runs", diffusion_runs)
    return state


ARGS = ["--device", "cpu", "--quick", "--only", "e2e", "--no-progress", "--backends", "reference"]


def test_e2e_writes_its_results_after_each_configuration(tmp_path: Path, fake_models: dict,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int, bool, bool]] = []
    write = report.write_results

    def spy(res, out_dir, tag, *, with_plot=True):
        e = res.get("e2e", {})
        seen.append((len(e.get("gpt", [])), len(e.get("diffusion", [])), bool(res.get("in_progress")), with_plot))
        return write(res, out_dir, tag, with_plot=with_plot)

    monkeypatch.setattr(report, "write_results", spy)
    main([*ARGS, "--out", str(tmp_path)])
    # kv-cache, DiffusionBERT steps 2 and 4, static: one write each while in progress, then the final one
    assert seen == [(1, 0, True, False), (1, 1, True, False), (1, 2, True, False), (2, 2, True, False),
                    (2, 2, False, True)]
    saved = json.loads((tmp_path / "cpu-e2e.json").read_text())
    assert "in_progress" not in saved and saved["e2e"]["diffusion"][0]["ratio_vs_gpt"]["kv-cache"] == 2.0


def test_a_run_killed_midway_keeps_what_it_measured(tmp_path: Path, fake_models: dict) -> None:
    fake_models["stop"] = 1  # the second DiffusionBERT configuration never finishes
    with pytest.raises(KeyboardInterrupt):
        main([*ARGS, "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "cpu-e2e.json").read_text())
    assert saved["in_progress"] is True
    assert len(saved["e2e"]["gpt"]) == 1 and [r["steps"] for r in saved["e2e"]["diffusion"]] == [2]
    assert saved["e2e"]["diffusion"][0]["ratio_vs_gpt"] == {"kv-cache": 2.0}
    md = (tmp_path / "cpu-e2e.md").read_text()
    assert "**in progress**" in md and "| 16 | 1 | 2 | reference |" in md
    assert not list(tmp_path.glob(".*.tmp"))  # written through a rename


def test_without_matplotlib_the_tables_and_json_are_still_written(tmp_path: Path, fake_models: dict,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    main([*ARGS, "--out", str(tmp_path)])
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert (tmp_path / "cpu-e2e.json").is_file() and (tmp_path / "cpu-e2e.md").is_file()
    assert not (tmp_path / "cpu-e2e.png").exists()
    assert "![" not in (tmp_path / "cpu-e2e.md").read_text()
    t = {"results": [], "config": {"batches": [1]}, "reference": {"gen_ppl": 1.0}}
    assert tradeoff.plot(t, tmp_path / "t.png", "title") is False
    assert not (tmp_path / "t.png").exists()
