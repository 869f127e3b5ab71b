"""bench.paper: variant list, claim verdicts, and the whole harness on a tiny model (and --quick)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from bench.paper import report
from bench.paper.__main__ import main, run
from bench.paper.presets import PRESETS, variants

from .model_fixtures import CORPUS, VOCAB


def test_variants_share_the_baseline_and_cover_every_comparison() -> None:
    vs = variants(PRESETS["small"])
    names = [v.name for v in vs]
    assert len(names) == len(set(names)) == 15  # 5 configurations x 3 seeds, baseline trained once per seed
    base = [v for v in vs if v.config_name == "spindle-tad-pretrained"]
    assert [v.seed for v in base] == [0, 1, 2] and all(v.groups == ("init", "schedule", "time") for v in base)
    assert {v.config_name for v in vs} == set(report.LABELS)
    assert [v.seed for v in vs[:5]] == [0] * 5  # seed 0 of everything first


def _run(config: str, seed: int, ppl: float) -> dict:
    return {"config": config, "seed": seed, "perplexity": ppl, "validation": []}


def test_claim_verdicts_follow_the_per_seed_signs() -> None:
    base, other = "spindle-tad-pretrained", "d3pm-tad-pretrained"
    held = report.verdicts([_run(base, 0, 10), _run(base, 1, 11), _run(other, 0, 12), _run(other, 1, 13)], [])
    assert held["spindle_beats_d3pm"]["verdict"] == "held"
    assert held["spindle_beats_d3pm"]["difference"] == pytest.approx(2.0)
    assert held["spindle_beats_d3pm"]["seed_spread"] == pytest.approx(1.0)
    mixed = report.verdicts([_run(base, 0, 10), _run(base, 1, 14), _run(other, 0, 12), _run(other, 1, 13)], [])
    assert mixed["spindle_beats_d3pm"]["verdict"] == "inconclusive (seeds disagree)"
    worse = report.verdicts([_run(base, 0, 13), _run(other, 0, 12)], [])
    assert worse["spindle_beats_d3pm"]["verdict"] == "did not hold (one seed)"
    sweep = [{"sampling_steps": k, "perplexity": p} for k, p in ((2, 30.0), (4, 20.0), (8, 25.0))]
    assert report.verdicts([], sweep)["more_steps_lower_perplexity"]["verdict"].startswith("did not hold")


def test_harness_trains_evaluates_reports_and_reruns_from_cache(tmp_path) -> None:
    # the quick preset on the test fixtures: a tiny model for both inits (so they must agree exactly)
    preset = replace(PRESETS["quick"], name="fixture", data=str(CORPUS), tokenizer=str(VOCAB), init_pretrained="tiny",
                     init_scratch="tiny", max_train_sentences=None, bleu_samples=4)
    first = run(preset, tmp_path / "cache", tmp_path / "out", command="test")
    assert len(first["runs"]) == 5 and all(r["trained_now"] for r in first["runs"])
    by = {r["config"]: r for r in first["runs"]}
    assert by["spindle-tad-pretrained"]["perplexity"] == by["spindle-tad-scratch"]["perplexity"]
    assert by["spindle-tad-pretrained"]["perplexity"] != by["d3pm-tad-pretrained"]["perplexity"]
    assert [r["sampling_steps"] for r in first["sweep"]] == list(preset.sweep_steps)
    md = (tmp_path / "out" / "fixture.md").read_text()
    assert "PPL (ELBO bound)" in md and "discretised ELBO" in md and all(lbl in md for lbl in report.LABELS.values())
    assert (tmp_path / "out" / "fixture.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "fixture.json").read_text())["best"] == first["best"]
    again = run(preset, tmp_path / "cache", tmp_path / "out", command="test")
    assert not any(r["trained_now"] for r in again["runs"])
    assert [r["perplexity"] for r in again["runs"]] == [r["perplexity"] for r in first["runs"]]
    # a second seed shares the cache: only the new seed's variants are trained
    more = run(replace(preset, name="fixture-2seeds", seeds=(0, 1), ablation_seeds=(0, 1), cache_name="fixture"),
               tmp_path / "cache", tmp_path / "out", command="test")
    assert sorted((r["seed"], r["trained_now"]) for r in more["runs"]) == [(0, False)] * 5 + [(1, True)] * 5


@pytest.mark.slow
def test_quick_command_on_the_builtin_corpus(tmp_path) -> None:
    res = main(["--quick", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")])
    assert len(res["runs"]) == 5 and (tmp_path / "out" / "quick.md").is_file()
    assert set(res["verdicts"]) == {"spindle_beats_d3pm", "tad_vs_lte", "tad_vs_pte", "pretrained_converges_faster",
                                    "more_steps_lower_perplexity"}
