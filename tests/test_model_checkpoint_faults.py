"""Checkpoints survive kills and interrupts; `--out` never destroys a user's files.

Fault injection: the save passes the named points of ``SAVE_FAULT_POINTS`` (between its file
operations); a hook (in-process, SIGINT) or ``DBERT_CHECKPOINT_FAULT=kill@N`` (a forked child,
SIGKILL) stops the run at each of them in turn, and a complete checkpoint must always survive and
resume to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import fields

import pytest
import torch
from safetensors.torch import load_file

from dbert_model import DiffusionSettings, TrainConfig, train
from dbert_model import checkpoint as ckpt
from dbert_model.checkpoint import SAVE_FAULT_POINTS, read_trainer_state, resolve_checkpoint
from dbert_model.cli import main

from .model_fixtures import CORPUS, VOCAB

# a save that stops after these points has switched `latest` to the new checkpoint
AFTER_SWITCH = {"switched", "cleaned"}


def _config(out, **overrides) -> TrainConfig:
    diffusion_fields = {f.name for f in fields(DiffusionSettings)}
    base = dict(
        out=str(out), data=str(CORPUS), init="tiny", tokenizer=str(VOCAB), batch_size=8, lr=3e-3, warmup_steps=1,
        max_steps=4, eval_every=100, eval_sentences=8, save_every=2, log_every=2, progress=False,
    )
    base.update({k: v for k, v in overrides.items() if k not in diffusion_fields})
    diffusion = {"max_len": 12, **{k: v for k, v in overrides.items() if k in diffusion_fields}}
    return TrainConfig(**base, diffusion=DiffusionSettings(**diffusion))


def _quiet(_: str) -> None:
    pass


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(resolve_checkpoint(path) / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A straight 4-step run and a copy stopped at step 2 (the run every fault case resumes)."""
    root = tmp_path_factory.mktemp("faults")
    train(_config(root / "straight"), log=_quiet)
    train(_config(root / "half", stop_after=2), log=_quiet)
    return root


def _check_survivor(out, straight, stopped_at: str | None, exact: bool = True) -> None:
    """``exact=False``: the run that saved step 4 used one thread (a forked child), so its float
    sums may differ from the straight run's in the last bits (tolerance 1e-5)."""
    state = read_trainer_state(out)
    assert state is not None, f"no complete checkpoint after a fault at {stopped_at}"
    expected = 4 if stopped_at in AFTER_SWITCH else 2
    assert state["step"] == expected, (stopped_at, state["step"])
    assert (out / "latest").read_text().strip() == f"checkpoint-{expected:08d}"
    if expected == 4 and not exact:
        a, b = _weights(out), _weights(straight)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-5)
        train(_config(out), log=_quiet)  # a resume at the last step: nothing to train, stale copies cleaned
    else:
        if expected == 4:
            assert _same(_weights(out), _weights(straight))
        train(_config(out), log=_quiet)  # resume from step 2
        assert read_trainer_state(out)["step"] == 4 and _same(_weights(out), _weights(straight))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint-00000004", "latest"], names  # stale copies cleaned by the next save


def test_a_save_passes_every_fault_point_in_order(runs, tmp_path) -> None:
    seen: list[str] = []
    ckpt.fault_hook = seen.append
    try:
        shutil.copytree(runs / "half", tmp_path / "run")
        train(_config(tmp_path / "run"), log=_quiet)
    finally:
        ckpt.fault_hook = None
    assert tuple(seen) == SAVE_FAULT_POINTS


@pytest.mark.parametrize("point", SAVE_FAULT_POINTS)
def test_ctrl_c_at_every_point_of_a_save_keeps_a_complete_checkpoint(runs, tmp_path, point: str) -> None:
    out = tmp_path / "run"
    shutil.copytree(runs / "half", out)

    def interrupt(at: str) -> None:
        if at == point:
            signal.raise_signal(signal.SIGINT)

    ckpt.fault_hook = interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            train(_config(out), log=_quiet)
    finally:
        ckpt.fault_hook = None
    _check_survivor(out, runs / "straight", point)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("index", range(len(SAVE_FAULT_POINTS)), ids=list(SAVE_FAULT_POINTS))
def test_kill_9_at_every_point_of_a_save_keeps_a_complete_checkpoint(runs, tmp_path, index: int) -> None:
    out = tmp_path / "run"
    shutil.copytree(runs / "half", out)
    pid = os.fork()
    if pid == 0:  # the child resumes and is killed by DBERT_CHECKPOINT_FAULT inside its one save
        try:
            torch.set_num_threads(1)  # a fresh thread pool: the parent's does not survive fork
            ckpt._fault_count = 0
            os.environ["DBERT_CHECKPOINT_FAULT"] = f"kill@{index + 1}"
            train(_config(out), log=_quiet)
        finally:
            os._exit(3)  # not reached when the kill happened
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
    _check_survivor(out, runs / "straight", SAVE_FAULT_POINTS[index], exact=False)


def test_out_holding_other_files_is_refused_and_nothing_is_deleted(tmp_path, capsys) -> None:
    args = ["train", "--data", str(CORPUS), "--tokenizer", str(VOCAB), "--init", "tiny", "--max-len", "12",
            "--batch-size", "16", "--steps", "2", "--eval-every", "100", "--eval-sentences", "8", "--no-progress"]
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("precious\n")
    assert main([*args, "--out", str(user)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a dbert checkpoint" in err and "--overwrite" in err
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    assert main([*args, "--out", str(user), "--overwrite"]) == 0
    assert (user / "notes.txt").read_text() == "precious\n" and read_trainer_state(user)["step"] == 2
    capsys.readouterr()
    # a regular file as --out: refused, untouched, no hidden copies
    file = tmp_path / "file.txt"
    file.write_text("keep me\n")
    assert main([*args, "--out", str(file), "--overwrite"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert file.read_text() == "keep me\n" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "mine"]
    # an impossible --out fails before the first step
    assert main([*args, "--out", str(file / "run")]) == 2
    captured = capsys.readouterr()
    assert "cannot be written" in captured.err and "step" not in captured.out
    # --no-resume on a checkpoint: refused unless --overwrite (then the run starts over)
    assert main([*args, "--out", str(user), "--no-resume"]) == 2
    assert "--no-resume" in capsys.readouterr().err
    assert main([*args, "--out", str(user), "--no-resume", "--overwrite", "--steps", "1"]) == 0
    assert read_trainer_state(user)["step"] == 1 and (user / "notes.txt").is_file()


def test_flat_layout_checkpoints_load_and_resume(runs, tmp_path, capsys) -> None:
    # the older layout: the checkpoint's files directly in --out, the config flat in trainer_state.json
    flat = tmp_path / "flat"
    shutil.copytree(resolve_checkpoint(runs / "half"), flat)
    state = json.loads((flat / "trainer_state.json").read_text())
    config = state["config"]
    state["config"] = {**{k: v for k, v in config.items() if k != "diffusion"}, **config["diffusion"]}
    (flat / "trainer_state.json").write_text(json.dumps(state))
    generate = ["generate", "-n", "2", "--steps", "3", "--no-progress", "--seed", "3"]
    assert main([*generate, "--model", str(flat)]) == 0
    from_flat = capsys.readouterr().out
    assert main([*generate, "--model", str(runs / "half")]) == 0
    assert capsys.readouterr().out == from_flat and len(from_flat.splitlines()) == 2
    train(_config(flat), log=_quiet)
    assert _same(_weights(flat), _weights(runs / "straight"))
    assert sorted(p.name for p in flat.iterdir()) == ["checkpoint-00000004", "latest"]  # migrated


def test_resume_uses_the_newest_complete_checkpoint_when_the_pointer_is_lost(runs, tmp_path) -> None:
    out = tmp_path / "run"
    shutil.copytree(runs / "half", out)
    (out / "latest").unlink()
    (out / ".tmp-checkpoint-00000004-abc").mkdir()  # a killed save's temporary copy
    assert resolve_checkpoint(out) == out / "checkpoint-00000002"
    train(_config(out), log=_quiet)
    assert _same(_weights(out), _weights(runs / "straight"))
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-00000004", "latest"]
