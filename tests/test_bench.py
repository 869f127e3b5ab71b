"""The benchmark harness (bench/): timing primitives, traffic model, reports, and a quick run."""

from __future__ import annotations

import json
import re
import sys
import time
import types

import pytest
import torch

import dbert_kernels as dk
from bench import e2e, kernels, quality, report, timing
from bench.__main__ import main

CPU = torch.device("cpu")


def test_summarize_median_and_percentiles() -> None:
    stats = timing.summarize([5.0, 1.0, 3.0, 2.0, 4.0, 100.0, 6.0, 7.0, 8.0, 9.0])
    assert stats.median_s == 5.5
    assert stats.p10_s == 1.0 and stats.p90_s == 9.0 and stats.repeats == 10
    with pytest.raises(ValueError, match="repeats"):
        timing.summarize([])


def test_time_calls_rotates_inputs_and_counts_calls() -> None:
    seen: list[tuple[str, int]] = []
    stats = timing.time_calls(lambda x, i: seen.append((x, i)), ["a", "b", "c"], CPU, warmup=2, repeats=4)
    assert stats.repeats == 4
    assert seen == [("a", 0), ("b", 1), ("c", 2), ("a", 3), ("b", 4), ("c", 5)]


def test_rotation_count_overflows_the_cache_within_bounds() -> None:
    assert timing.rotation_count(1 << 40, CPU) == 2
    assert timing.rotation_count(1, CPU) == 16
    assert timing.rotation_count(16 << 20, CPU) == 4  # 64 MiB / 16 MiB


def test_stopwatch_accumulates_and_resets() -> None:
    sw = timing.Stopwatch(CPU)
    for _ in range(2):
        with sw:
            time.sleep(0.01)
    assert 0.02 <= sw.total_s() < 1.0
    sw.reset()
    assert sw.total_s() == 0.0


def test_bytes_moved_is_the_compulsory_traffic() -> None:
    case = kernels.KernelCase("sample", "plain", 64, 30522, "bfloat16")
    assert kernels.bytes_moved(case) == 64 * 30522 * 2 + 64 * 12
    mask = kernels.KernelCase("spindle_mask", "spindle-code", 1024, 30522, "int64")
    assert mask.shape2d == (8, 128)
    assert kernels.bytes_moved(mask) == 1024 * 21 + 8 * 8


def test_timed_denoiser_does_not_change_generation() -> None:
    den = dk.BigramDenoiser(64, mask_id=3, seed=1)
    timed = e2e.TimedDenoiser(den, CPU)
    kwargs = dict(mask_id=3, batch_size=2, seq_len=12, steps=4, seed=5, progress=False, banned_ids=[3])
    assert torch.equal(dk.generate(timed, **kwargs), dk.generate(den, **kwargs))
    assert timed.watch.total_s() > 0


class _FakeBenchModel:
    def __init__(self) -> None:
        self.denoiser = dk.BigramDenoiser(40, mask_id=3, seed=0)
        self.mask_id = 3
        self.seq_len = 10
        self.generate_kwargs = {"banned_ids": [3]}

    def evaluate(self, samples: torch.Tensor) -> dict[str, float]:
        return {"n": float(samples.shape[0]), "distinct": float(samples.unique().numel())}


def test_quality_runs_each_step_count_through_the_loader() -> None:
    res = quality.run_quality(lambda ckpt, dev: _FakeBenchModel(), "ckpt", CPU, [2, 5], n_samples=5, batch_size=2)
    assert [r["steps"] for r in res] == [2, 5]
    assert all(r["n"] == 5.0 and r["seconds"] > 0 and r["seconds_per_batch"] == r["seconds"] / 3 for r in res)


def test_find_loader_reports_a_missing_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dbert_model", types.ModuleType("dbert_model"))
    assert "load_for_bench" in quality.find_loader()
    fake = types.ModuleType("dbert_model")
    fake.load_for_bench = lambda ckpt, dev: _FakeBenchModel()
    monkeypatch.setitem(sys.modules, "dbert_model", fake)
    assert quality.find_loader() is fake.load_for_bench


@pytest.fixture
def one_thread():
    """One torch thread: on a loaded machine, spinning OpenMP threads make a smoke run crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_quick_cpu_run_writes_consistent_results(tmp_path, capsys, one_thread) -> None:
    res = main(["--device", "cpu", "--quick", "--out", str(tmp_path), "--no-progress", "--note", "smoke"])
    out = capsys.readouterr().out
    assert "| op | variant |" in out and "GPT-2 variant" in out
    saved = json.loads((tmp_path / "cpu.json").read_text())
    assert saved["command"] == "python -m bench --device cpu --quick --out " + str(tmp_path) + \
        " --no-progress --note smoke"
    assert saved["environment"]["versions"]["torch"] == torch.__version__
    assert "smoke" in saved["notes"] and "random weights" in saved["notes"][0]
    k = saved["kernels"]
    assert k["copy_GBps"] > 0 and {r["op"] for r in k["results"]} == {"sample", "spindle_mask", "topk_unmask"}
    assert all(r["backend"] != "triton" for r in k["results"])
    for r in k["results"]:
        assert r["bandwidth_GBps"] == pytest.approx(r["bytes"] / r["median_s"] / 1e9)
    e = saved["e2e"]
    assert {r["steps"] for r in e["diffusion"]} == {2, 4}
    gpt = {(g["variant"], g["tokens"], g["batch"]): g["tokens_per_s"] for g in e["gpt"]}
    for r in e["diffusion"]:
        assert 0 < r["model_share"] < 1 and r["tokens_per_s"] == pytest.approx(r["batch"] * r["tokens"] / r["median_s"])
        for variant, ratio in r["ratio_vs_gpt"].items():
            assert ratio == pytest.approx(r["tokens_per_s"] / gpt[(variant, r["tokens"], r["batch"])])
    assert saved["quality"]["skipped"]
    assert (tmp_path / "cpu.png").read_bytes()[:4] == b"\x89PNG"
    assert "[cpu](cpu.md)" in (tmp_path / "README.md").read_text()
    assert res["mode"] == "quick"


def test_device_tag_names_the_card() -> None:
    assert report.device_tag({"device": "cpu"}) == "cpu"
    assert report.device_tag({"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3"}) == "cuda-nvidia-h100-80gb-hbm3"


def test_quality_only_run_uses_the_loader_and_keeps_the_full_results(tmp_path, monkeypatch) -> None:
    fake = types.ModuleType("dbert_model")
    fake.load_for_bench = lambda ckpt, dev: _FakeBenchModel()
    monkeypatch.setitem(sys.modules, "dbert_model", fake)
    main(["--device", "cpu", "--quick", "--only", "quality", "--checkpoint", "ckpt", "--out", str(tmp_path),
          "--no-progress"])
    assert not (tmp_path / "cpu.json").exists()
    saved = json.loads((tmp_path / "cpu-quality.json").read_text())
    assert [r["steps"] for r in saved["quality"]["results"]] == [2, 4]
    assert "| steps | seconds | s / batch | n | distinct |" in (tmp_path / "cpu-quality.md").read_text()


def test_spent_budget_skips_and_lists_every_measurement(tmp_path) -> None:
    res = main(["--device", "cpu", "--quick", "--only", "kernels,e2e", "--budget-s", "0", "--out", str(tmp_path),
                "--no-progress"])
    assert res["kernels"]["results"] == [] and len(res["kernels"]["skipped"]) == 4
    e = res["e2e"]
    assert e["diffusion"] == [] and e["gpt"] == []
    assert len(e["skipped"]) == 3 and all("time budget" in s for s in e["skipped"])
    # one configuration per (shape, available CPU backend): every one of them is listed as skipped
    assert re.search(r"Skipped: DiffusionBERT: (\d+) of \1 configurations", (tmp_path / "cpu.md").read_text())


def test_a_failing_configuration_keeps_the_results_before_it() -> None:
    from bench.__main__ import Budget, _consume

    def runs():
        yield {"tokens": 8, "batch": 1}
        raise RuntimeError("planted compile failure")

    class Bar:
        def update(self, n: int) -> None:
            pass

        def set_postfix_str(self, s: str) -> None:
            pass

    out: list[dict] = []
    skipped: list[str] = []
    _consume(runs(), 3, "GPT-2 static-compile", out, skipped, Bar(), Budget(None))
    load = {k: out[0][k] for k in ("load_before", "load_after", "overloaded")}  # each cell records the load
    assert out == [{"tokens": 8, "batch": 1, **load}]
    assert len(skipped) == 1 and "2 of 3" in skipped[0] and "planted compile failure" in skipped[0]
