"""bench.paper: variant list, claim verdicts, and the whole harness on a tiny model (and --quick)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

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
    assert held["spindle_beats_d3pm"]["beyond_spread"] is True  # paired differences 2, 2 > spread 1
    noisy = report.verdicts([_run(base, 0, 10), _run(base, 1, 13), _run(other, 0, 12), _run(other, 1, 14)], [])
    assert noisy["spindle_beats_d3pm"]["verdict"] == "held" and noisy["spindle_beats_d3pm"]["beyond_spread"] is False
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
    assert res["smoke"] is True and res["verdicts"] is None  # a smoke run: no verdicts from 4-step models
    md = (tmp_path / "out" / "quick.md").read_text()
    assert "smoke run" in md and "held" not in md and "PPL" not in md


def test_exact_posterior_weights_sum_to_one_and_the_authors_rule_does_not() -> None:
    """T = 2048, lambda = 0.3 (the authors' setting): the exact posterior's total weight per token is
    keep(0) - keep(T) = 0.999 (the code form clips keep at 0.999) for every class; the authors'
    rule gives 0.78 to a token 0.4 below its sentence's mean information and 1.22 to one 0.4 above
    (tolerance 0.005)."""
    from bench.paper.bound import class_table, weight_totals
    from dbert_kernels import Schedule

    rows = {round(r["w_minus_mean"], 2): r for r in class_table(Schedule.spindle(0.3, T=2048), [-0.4, 0.0, 0.4])}
    for row in rows.values():
        assert abs(row["exact"] - 0.999) < 1e-6  # float32 keep probabilities
    assert abs(rows[-0.4]["authors"] - 0.78) < 0.005 and abs(rows[0.4]["authors"] - 1.22) < 0.005
    assert abs(rows[0.0]["authors"] - 1.0) < 0.002  # at the sentence mean both rules nearly agree
    # with a stride (the authors' eval_step_size) the exact rule still telescopes; plain D3PM: exactly 1
    info = torch.tensor([[0.9, 0.1, 0.5], [0.3, 0.3, 0.0]])
    real = torch.tensor([[True, True, True], [True, True, False]])
    exact, authors = weight_totals(Schedule.spindle(0.3, T=256), info, real, step=16)
    torch.testing.assert_close(exact[real], torch.full((5,), 0.999, dtype=torch.float64))
    assert exact[1, 2] == 0 and authors[1, 2] == 0
    exact, authors = weight_totals(Schedule.d3pm(64), info, real)
    torch.testing.assert_close(exact[real], torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(authors[real], torch.ones(5, dtype=torch.float64))  # no spindle: the same rule


def test_authors_reveal_probability_is_their_formula() -> None:
    """keep_s beta / (keep_s beta + 1 - keep_s) with the sentence-level beta = 1 - ab_t / ab_s;
    equal to the exact posterior when keep is the sentence-level alphabar."""
    from dbert_model.losses import authors_reveal_probability

    keep_s, ab_s, ab_t = torch.tensor([0.6]), torch.tensor([0.5]), torch.tensor([0.4])
    beta = 1 - 0.4 / 0.5
    expected = 0.6 * beta / (0.6 * beta + 0.4)
    torch.testing.assert_close(authors_reveal_probability(keep_s, ab_s, ab_t), torch.tensor([expected]))
    torch.testing.assert_close(authors_reveal_probability(ab_s, ab_s, ab_t), (ab_s - ab_t) / (1 - ab_t))


def test_a_smoke_run_reports_no_numbers_and_no_verdicts(tmp_path, capsys) -> None:
    # the quick preset's name marks a smoke run: the same harness, a report without tables or verdicts
    from bench.paper.presets import is_smoke

    preset = replace(PRESETS["quick"], name="quick-fixture", data=str(CORPUS), tokenizer=str(VOCAB),
                     init_pretrained="tiny", init_scratch="tiny", max_train_sentences=None, bleu_samples=4,
                     ablation_seeds=(), sweep_steps=(2,))
    assert is_smoke(preset) and is_smoke(PRESETS["quick"]) and not is_smoke(PRESETS["small"])
    res = run(preset, tmp_path / "cache", tmp_path / "out", command="test")
    printed = capsys.readouterr().out
    md = (tmp_path / "out" / "quick-fixture.md").read_text()
    assert res["smoke"] is True and res["verdicts"] is None and res["runs"]
    for text in (printed, md):
        assert "smoke run" in text and "no verdicts" in text
        assert "held" not in text and "PPL" not in text and "| model |" not in text
        assert not any(f"{r['perplexity']:.1f}" in text for r in res["runs"])
    assert not (tmp_path / "out" / "quick-fixture.png").exists()
