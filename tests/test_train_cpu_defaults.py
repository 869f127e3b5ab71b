"""dbert train on a CPU: defaults sized for one, every default in --help, an ETA line, a clipped warm-up."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from dbert_model import DiffusionSettings, TrainConfig, train
from dbert_model.cli import main
from dbert_model.settings import TRAIN_DEFAULT_TIME
from dbert_model.train import ETA_AFTER_S, ETA_AFTER_STEPS, clip_warmup, eta_line

from .model_fixtures import CORPUS, VOCAB

DOCS = Path(__file__).resolve().parent.parent / "docs" / "model.md"


def test_the_defaults_are_a_cpu_run_and_the_docs_state_them() -> None:
    d = TrainConfig()
    # sized for minutes on a 2-core CPU (about 2.5 s a step of 16 sentences): at most 8000 sentences
    assert d.max_steps * d.batch_size <= 8000 and d.warmup_steps < d.max_steps
    assert d.eval_every <= d.max_steps and d.save_every <= d.max_steps
    docs = DOCS.read_text()
    for text in (f"--steps {d.max_steps}", f"--batch-size {d.batch_size}", f"--warmup {d.warmup_steps}",
                 TRAIN_DEFAULT_TIME):
        assert text in docs, f"docs/model.md does not state the default {text!r}"


def test_help_shows_every_default_and_the_time(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    raw = capsys.readouterr().out
    assert TRAIN_DEFAULT_TIME in " ".join(raw.split()) and "recipes/bert-base-lm1b.json" in raw
    options = raw.split("options:", 1)[1]
    entries = {e.split()[0].rstrip(","): " ".join(e.split()) for e in re.split(r"\n  (?=-)", options) if e.strip()}
    undocumented = [flag for flag, text in entries.items() if flag not in ("-h", "--help") and "default: " not in text]
    assert not undocumented, f"--help shows no default for {undocumented}"
    d = TrainConfig()
    for flag, value in (("--steps", d.max_steps), ("--batch-size", d.batch_size), ("--warmup", d.warmup_steps),
                        ("--lr", d.lr), ("--eval-every", d.eval_every), ("--init", d.init), ("--out", d.out),
                        ("--max-len", d.diffusion.max_len), ("--schedule", d.diffusion.schedule),
                        ("--grad-clip", d.grad_clip), ("--minutes", None), ("--bf16", False)):
        assert re.search(rf"default: {re.escape(str(value))}(\)|$)", entries[flag]), (flag, entries[flag])


def test_a_warmup_not_shorter_than_the_run_is_clipped_with_a_message() -> None:
    said: list[str] = []
    cfg = TrainConfig(warmup_steps=100, max_steps=20)
    clipped = clip_warmup(cfg, said.append)
    assert clipped.warmup_steps == 2 and clipped.max_steps == 20 and len(said) == 1
    assert "warm-up of 100 steps" in said[0] and "clipped to 2" in said[0]
    same = TrainConfig(warmup_steps=5, max_steps=20)
    assert clip_warmup(same, said.append) is same and len(said) == 1


def test_eta_line_after_ten_steps_or_fifteen_seconds() -> None:
    assert eta_line(ETA_AFTER_STEPS - 1, ETA_AFTER_S - 1, 100) is None
    assert eta_line(0, 100.0, 100) is None
    line = eta_line(ETA_AFTER_STEPS, 20.0, 590)  # 2 s/step: 20 s + 1180 s = 20 min
    assert line == "ETA ~20 min for 600 steps (2.00 s/step)"
    assert eta_line(2, ETA_AFTER_S, 8) == "ETA ~75 s for 10 steps (7.50 s/step)"
    assert "--minutes 5 stops it first" in eta_line(ETA_AFTER_STEPS, 60.0, 1000, max_minutes=5)


def test_a_short_run_says_its_eta_and_clips_the_default_warmup(tmp_path, capsys) -> None:
    said: list[str] = []
    cfg = TrainConfig(out=str(tmp_path / "run"), data=str(CORPUS), init="tiny", tokenizer=str(VOCAB), batch_size=8,
                      max_steps=12, eval_every=12, eval_sentences=8, save_every=12, progress=False,
                      diffusion=DiffusionSettings(max_len=16))
    assert cfg.warmup_steps >= cfg.max_steps  # the default warm-up is longer than this run
    result = train(cfg, log=said.append)
    printed = capsys.readouterr().out
    assert result.steps == 12
    assert sum("warm-up of" in s and "clipped to 1 steps" in s for s in said) == 1
    assert len(re.findall(r"^ETA ~\d+ s for 12 steps", printed, flags=re.M)) == 1
    # the clipped warm-up is what the run used (and saved)
    from dbert_model.checkpoint import read_trainer_state

    assert read_trainer_state(tmp_path / "run")["config"]["warmup_steps"] == 1
    assert replace(cfg, warmup_steps=1).to_json() == read_trainer_state(tmp_path / "run")["config"]
