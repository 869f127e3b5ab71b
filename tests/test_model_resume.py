"""A resume reproduces the log, and checkpoints written before the running loss sums were saved
still resume."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch
from safetensors.torch import load_file

from dbert_model import DiffusionSettings, TrainConfig, train
from dbert_model.checkpoint import read_trainer_state, resolve_checkpoint
from dbert_model.cli import main

from .model_fixtures import CORPUS, VOCAB

#: the files of a checkpoint as the code before this change wrote them (trainer_state.json without 'running')
OLD_FILES = {"config.json", "dbert.json", "model.safetensors", "optimizer.pt", "token_stats.safetensors",
             "tokenizer.json", "tokenizer_config.json", "trainer_state.json", "vocab.txt"}
OLD_STATE_KEYS = {"step", "config", "history", "validation"}


def _config(out, **overrides) -> TrainConfig:
    diffusion_fields = {f.name for f in fields(DiffusionSettings)}
    diffusion = {"max_len": 12, "time_design": "lte", "loss": "mdlm", "schedule": "d3pm",
                 **{k: v for k, v in overrides.items() if k in diffusion_fields}}
    base = dict(out=str(out), data=str(CORPUS), init="tiny", tokenizer=str(VOCAB), batch_size=8, lr=3e-3,
                warmup_steps=1, max_steps=6, eval_every=100, eval_sentences=8, save_every=100, log_every=3,
                progress=False)
    base.update({k: v for k, v in overrides.items() if k not in diffusion_fields})
    return TrainConfig(**base, diffusion=DiffusionSettings(**diffusion))


def _quiet(_: str) -> None:
    pass


def _history(path) -> list[dict]:
    state = read_trainer_state(path)
    assert state is not None
    return [{k: v for k, v in h.items() if k != "elapsed_s"} for h in state["history"]]


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(resolve_checkpoint(path) / "model.safetensors"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "straight"
    train(_config(out), log=_quiet)
    return out


@pytest.mark.parametrize("stop", [4, 5])
def test_a_resume_between_two_log_lines_logs_the_same_history(straight, tmp_path, stop: int) -> None:
    out = tmp_path / "run"
    train(_config(out, stop_after=stop), log=_quiet)
    state = read_trainer_state(out)
    assert state["step"] == stop and state["running"]["steps"] == stop - 3  # steps since the log line of step 3
    train(_config(out), log=_quiet)
    assert [h["step"] for h in _history(out)] == [3, 6]
    assert _history(out) == _history(straight)  # the entry of step 6 averages steps 4..6 in both
    a, b = _weights(out), _weights(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _to_old_layout(out) -> None:
    """Rewrite the checkpoint as the code before this change wrote it: no 'running' in trainer_state.json."""
    files = resolve_checkpoint(out)
    assert {p.name for p in files.iterdir()} == OLD_FILES
    state = json.loads((files / "trainer_state.json").read_text())
    del state["running"]
    assert set(state) == OLD_STATE_KEYS
    (files / "trainer_state.json").write_text(json.dumps(state, indent=2) + "\n")


@pytest.mark.parametrize("arch", ["diffusion", "gpt2"])
def test_a_checkpoint_in_the_old_layout_still_loads_and_resumes(straight, tmp_path, capsys, arch: str) -> None:
    out, ref = tmp_path / "old", tmp_path / "ref"
    if arch == "gpt2":
        train(_config(ref, arch=arch), log=_quiet)
    else:
        ref = straight
    train(_config(out, arch=arch, stop_after=3), log=_quiet)  # stopped at a log line: nothing lost in either layout
    _to_old_layout(out)
    capsys.readouterr()
    assert main(["generate", "--model", str(out), "-n", "2", "--steps", "2", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("[0] ")
    resumed = train(_config(out, arch=arch), log=_quiet)
    assert resumed.steps == 6 and _history(out) == _history(ref)
    a, b = _weights(out), _weights(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # stopped between two log lines, an old checkpoint resumes as before (the entry averages the steps since it)
    out2 = tmp_path / "old2"
    train(_config(out2, arch=arch, stop_after=4), log=_quiet)
    _to_old_layout(out2)
    history = train(_config(out2, arch=arch), log=_quiet).history
    assert [h["step"] for h in history] == [3, 6] and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert _weights(out2).keys() == a.keys() and all(torch.equal(_weights(out2)[k], a[k]) for k in a)


def test_a_malformed_running_sum_is_one_line(straight, tmp_path, capsys) -> None:
    out = tmp_path / "bad"
    train(_config(out, stop_after=4), log=_quiet)
    files = resolve_checkpoint(out)
    state = json.loads((files / "trainer_state.json").read_text())
    state["running"] = {"steps": "two"}
    (files / "trainer_state.json").write_text(json.dumps(state))
    argv = ["train", "--out", str(out), "--data", str(CORPUS), "--tokenizer", str(VOCAB), "--init", "tiny",
            "--max-len", "12", "--time-design", "lte", "--loss", "mdlm", "--schedule", "d3pm", "--batch-size", "8",
            "--lr", "3e-3", "--warmup", "1", "--steps", "6", "--eval-every", "100", "--eval-sentences", "8",
            "--save-every", "100", "--log-every", "3", "--no-progress"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "running" in err[0] and "trainer_state.json" in err[0]
