"""Every predictable bad invocation of `dbert` ends in one line on stderr and exit status 2.

Each case damages a copy of a tiny trained checkpoint (or passes a bad flag) and runs the entry
point; the assertion is the same for all: status 2, exactly one line on stderr that names the
problem, no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dbert_model.checkpoint import resolve_checkpoint
from dbert_model.cli import main

from .model_fixtures import CORPUS, VOCAB

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--data", str(CORPUS), "--tokenizer", str(VOCAB), "--init", "tiny", "--max-len", "12",
         "--batch-size", "8", "--eval-every", "100", "--eval-sentences", "8", "--no-progress"]
GENERATE = ["generate", "-n", "1", "--steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli_errors") / "run"
    assert main([*TRAIN, "--out", str(out), "--steps", "2"]) == 0
    return out


def _copy(run: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the run directory and its checkpoint files' directory."""
    shutil.copytree(run, tmp_path / "copy")
    return tmp_path / "copy", resolve_checkpoint(tmp_path / "copy")


def _fails_cleanly(capsys, argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith(f"dbert {argv[0]}: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


DAMAGE: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "random weights": (lambda d: (d / "model.safetensors").write_bytes(os.urandom(512)), ("model.safetensors",)),
    "truncated weights": (
        lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
        ("model.safetensors",),
    ),
    "empty weights": (lambda d: (d / "model.safetensors").write_bytes(b""), ("model.safetensors",)),
    "random token stats": (lambda d: (d / "token_stats.safetensors").write_bytes(os.urandom(300)), ("token_stats",)),
    "settings are a list": (lambda d: (d / "dbert.json").write_text("[1, 2]"), ("dbert.json", "JSON object")),
    "settings are not JSON": (lambda d: (d / "dbert.json").write_text("{nope"), ("dbert.json",)),
    "no special ids": (
        lambda d: _edit_json(d / "dbert.json", lambda j: {k: v for k, v in j.items() if k != "special_ids"}),
        ("special_ids",),
    ),
    "mask id out of range": (
        lambda d: _edit_json(d / "dbert.json", lambda j: {**j, "special_ids": {**j["special_ids"], "mask": 10**6}}),
        ("special_ids['mask']",),
    ),
    "no vocab size": (
        lambda d: _edit_json(d / "dbert.json", lambda j: {k: v for k, v in j.items() if k != "vocab_size"}),
        ("vocab_size",),
    ),
    "max_len beyond the positions": (
        lambda d: _edit_json(d / "dbert.json", lambda j: {**j, "max_len": 500}), ("max_len 500", "positions"),
    ),
    "edited config": (
        lambda d: _edit_json(d / "config.json", lambda j: {**j, "intermediate_size": 7}), ("model.safetensors",),
    ),
    "config not JSON": (lambda d: (d / "config.json").write_text("{"), ("config.json",)),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_checkpoint_gives_one_line(run, tmp_path, capsys, case: str) -> None:
    copy, files = _copy(run, tmp_path)
    damage, needles = DAMAGE[case]
    damage(files)
    _fails_cleanly(capsys, [*GENERATE, "--model", str(copy)], *needles)


def test_seq_len_beyond_the_positions(run, capsys) -> None:
    _fails_cleanly(capsys, [*GENERATE, "--model", str(run), "--seq-len", "500"], "--seq-len 500")


@pytest.mark.parametrize("device,needle", [("foo", "--device 'foo'"), ("cuda", "--device cuda"), ("cuda:7", "cuda:7")])
def test_bad_devices(run, capsys, device: str, needle: str) -> None:
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the GPU")
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _fails_cleanly(capsys, [*GENERATE, "--model", str(run), "--device", device], needle)
    _fails_cleanly(capsys, [*TRAIN, "--out", str(run), "--device", device], needle)


def test_unknown_backend(run, capsys) -> None:
    _fails_cleanly(capsys, [*GENERATE, "--model", str(run), "--backend", "fast"], "--backend fast")


@pytest.mark.parametrize("case", ["optimizer", "trainer state", "trainer state step"])
def test_a_damaged_resume_state_gives_one_line(run, tmp_path, capsys, case: str) -> None:
    copy, files = _copy(run, tmp_path)
    if case == "optimizer":
        (files / "optimizer.pt").write_bytes(os.urandom(200))
        needles: tuple[str, ...] = ("optimizer.pt", "--no-resume --overwrite")
    elif case == "trainer state":
        (files / "trainer_state.json").write_text("{")
        needles = ("trainer_state.json",)
    else:
        _edit_json(files / "trainer_state.json", lambda j: {**j, "step": "four"})
        needles = ("trainer_state.json", "step")
    _fails_cleanly(capsys, [*TRAIN, "--out", str(copy), "--steps", "4"], *needles)


def test_eval_samples_1_is_refused_before_any_work(tmp_path, capsys) -> None:
    # the model does not even exist: the flag is checked first
    _fails_cleanly(capsys, ["eval", "--model", str(tmp_path / "none"), "--samples", "1"], "--samples")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the Triton backend runs here")
def test_triton_backend_without_a_gpu_through_the_console_entry_point(run) -> None:
    # a user's environment: no GPU and no Triton interpreter (the test suite turns it on)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / ".pp"), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "dbert_model.cli", *GENERATE, "--model", str(run), "--backend", "triton"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "--backend triton" in proc.stderr


@pytest.mark.parametrize("flags, needle", [
    (["--strategy", "threshold", "--threshold", "2"], "threshold"),
    (["--strategy", "entropy_bound", "--gamma", "0"], "gamma"),
    (["--block-length", "0"], "--block-length"),
    (["--refresh-every", "0", "--block-length", "4", "--cache", "dual"], "--refresh-every"),
])
def test_bad_decoding_flags_are_refused_before_the_model_is_loaded(tmp_path, capsys, flags, needle) -> None:
    # the model does not exist: the decoding flags are checked first
    _fails_cleanly(capsys, [*GENERATE, "--model", str(tmp_path / "none"), *flags], needle)
