"""The demo model's recipe, cache directory, rebuild switches and messages (training replaced by a stub)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import dbert_model.demo as demo
from dbert_model import cli
from dbert_model.cli import main


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DBERT_CACHE", str(tmp_path))
    return tmp_path


class FakeTrainer:
    """Records each call and writes a file in place of a checkpoint."""

    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, cfg, log=print):
        self.calls.append(cfg)
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "trained").write_text(json.dumps({"step": cfg.max_steps, "n": len(self.calls)}))


@pytest.fixture()
def fake_checkpoints(monkeypatch):
    """is_checkpoint / read_trainer_state read FakeTrainer's file."""
    monkeypatch.setattr(demo, "is_checkpoint", lambda path: (Path(path) / "trained").is_file())
    monkeypatch.setattr(demo, "read_trainer_state", lambda path: json.loads((Path(path) / "trained").read_text()))


def test_the_recipe_is_fixed_steps_without_a_time_cap() -> None:
    assert demo.DEMO_CONFIG.max_minutes is None and demo.DEMO_CONFIG.stop_after is None
    assert demo.DEMO_CONFIG.max_steps > demo.DEMO_CONFIG.warmup_steps
    minutes = demo.demo_estimate_seconds() / 60
    assert 2 <= minutes <= 8, minutes  # the demo's budget: a few minutes on an idle 2-core CPU


def test_the_cache_directory_is_keyed_on_the_recipe(cache) -> None:
    base = demo.demo_model_path()
    assert base.parent == cache and base.name == f"demo-minilm-{demo.demo_recipe_hash()}"
    assert len(demo.demo_recipe_hash()) == 8
    # where it goes and how it reports do not change the model
    same = replace(demo.DEMO_CONFIG, out="elsewhere", progress=False, overwrite=True)
    assert demo.demo_model_path(same) == base
    # anything that changes the model does
    for changed in (replace(demo.DEMO_CONFIG, lr=1e-4), replace(demo.DEMO_CONFIG, max_steps=301),
                    replace(demo.DEMO_CONFIG, seed=1),
                    replace(demo.DEMO_CONFIG, diffusion=replace(demo.DEMO_CONFIG.diffusion, max_len=24))):
        assert demo.demo_model_path(changed) != base


def test_trains_once_then_reuses(cache, fake_checkpoints) -> None:
    trainer, lines = FakeTrainer(), []
    path = demo.ensure_demo_model(lines.append, trainer=trainer)
    assert path == demo.demo_model_path() and len(trainer.calls) == 1
    cfg = trainer.calls[0]
    assert cfg.out == str(path) and cfg.max_steps == demo.DEMO_CONFIG.max_steps and cfg.max_minutes is None
    text = "\n".join(lines)
    assert f"{demo.DEMO_CONFIG.max_steps} steps" in text and "Expected time: about" in text
    assert "dbert demo --rebuild" in text
    lines.clear()
    assert demo.ensure_demo_model(lines.append, trainer=trainer) == path
    assert len(trainer.calls) == 1 and not lines


def test_rebuild_trains_again(cache, fake_checkpoints) -> None:
    trainer, lines = FakeTrainer(), []
    path = demo.ensure_demo_model(lines.append, trainer=trainer)
    (path / "stale-file").write_text("x")
    demo.ensure_demo_model(lines.append, rebuild=True, trainer=trainer)
    assert len(trainer.calls) == 2 and not (path / "stale-file").exists()
    assert any("removing the cached demo model" in line for line in lines)


def test_an_unfinished_demo_is_trained_again(cache, fake_checkpoints) -> None:
    path = demo.demo_model_path()
    path.mkdir(parents=True)
    (path / "trained").write_text(json.dumps({"step": demo.DEMO_CONFIG.max_steps - 1}))
    trainer = FakeTrainer()
    demo.ensure_demo_model(lambda _: None, trainer=trainer)
    assert len(trainer.calls) == 1 and trainer.calls[0].overwrite


def test_an_older_recipe_is_named_for_deletion(cache, fake_checkpoints) -> None:
    (cache / "demo-minilm-v1").mkdir()
    lines: list[str] = []
    demo.ensure_demo_model(lines.append, trainer=FakeTrainer())
    assert any("demo-minilm-v1" in line and "deleted" in line for line in lines)


def test_dbert_demo_command(monkeypatch, capsys) -> None:
    seen = []
    monkeypatch.setattr(demo, "ensure_demo_model", lambda rebuild=False: seen.append(rebuild) or Path("/x/demo"))
    assert main(["demo"]) == 0 and main(["demo", "--rebuild"]) == 0
    assert seen == [False, True]
    assert "demo model: /x/demo" in capsys.readouterr().out


def test_rebuild_demo_with_a_model_is_refused(tmp_path, capsys) -> None:
    code = main(["generate", "--model", str(tmp_path), "--rebuild-demo", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("dbert generate: error: --rebuild-demo")


SPECIAL = {"cls": 101, "sep": 102, "pad": 0, "mask": 103, "unk": 100}


@pytest.mark.parametrize(
    ("row", "needle"),
    [([101, 102, 0, 0], "ended the row with [SEP] at once"),
     ([101, 0, 0, 0], "[PAD] right after [CLS]"),
     ([101, 100, 102, 0], "all special tokens")],
)
def test_empty_samples_say_why(monkeypatch, capsys, row: list[int], needle: str) -> None:
    loaded = SimpleNamespace(arch="gpt2", settings=SimpleNamespace(special_ids=SPECIAL))
    ids = torch.tensor([[101, 2023, 102, 0], row])
    monkeypatch.setattr(cli, "_load", lambda args: loaded)
    monkeypatch.setattr(cli, "_sample", lambda loaded, args, n: (ids, ["this", ""], None))
    assert main(["generate", "-n", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[0] this"
    assert out[1] == f"[1] (empty: {cli._empty_reason(row, loaded.settings)})" and needle in out[1]


def test_a_busy_machine_is_announced(cache, fake_checkpoints, monkeypatch) -> None:
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(demo.os, "cpu_count", lambda: 2)
    lines: list[str] = []
    demo.ensure_demo_model(lines.append, trainer=FakeTrainer())
    assert any("load average is 9.0 on 2 cores" in line for line in lines)
    monkeypatch.setattr(demo.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    lines.clear()
    demo.ensure_demo_model(lines.append, rebuild=True, trainer=FakeTrainer())
    assert not any("load average" in line for line in lines)
