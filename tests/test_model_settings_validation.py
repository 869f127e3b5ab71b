"""Training settings are validated in one place (TrainConfig): the Python API, a ``--config`` file
and the ``dbert train`` flags refuse the same bad values with the same one-line message."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dbert_model import TrainConfig
from dbert_model.cli import main

from .model_fixtures import CORPUS, VOCAB

TRAIN = ["train", "--data", str(CORPUS), "--tokenizer", str(VOCAB), "--init", "tiny", "--max-len", "12",
         "--batch-size", "8", "--steps", "2", "--eval-every", "100", "--eval-sentences", "8", "--no-progress"]

# field, value, the CLI flag and its text, a needle of the message
BAD = [
    ("batch_size", 0, "--batch-size", "0", "int >= 1"),
    ("max_steps", 0, "--steps", "0", "int >= 1"),
    ("log_every", 0, "--log-every", "0", "int >= 1"),
    ("max_minutes", -1.0, "--minutes", "-1", "finite number > 0"),
    ("max_minutes", math.nan, "--minutes", "nan", "finite number > 0"),
    ("sample_every", -1, "--sample-every", "-1", "int >= 0"),
    ("weight_decay", -1.0, "--weight-decay", "-1", "finite number >= 0"),
    ("lr", 0.0, "--lr", "0", "finite number > 0"),
    ("lr", math.inf, "--lr", "inf", "finite number > 0"),
    ("grad_clip", 0.0, "--grad-clip", "0", "finite number > 0"),
    ("warmup_steps", -1, "--warmup", "-1", "int >= 0"),
]


def _one_line(capsys, argv) -> str:
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exc:  # --config is read before the flags are parsed
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("dbert train: error: ")
    return lines[0]


@pytest.mark.parametrize("name,value,flag,text,needle", BAD, ids=[f"{b[0]}={b[1]}" for b in BAD])
def test_api_config_file_and_flags_refuse_a_bad_value_alike(tmp_path, capsys, name, value, flag, text, needle) -> None:
    with pytest.raises(ValueError) as exc:
        TrainConfig(**{name: value})
    message = str(exc.value)
    assert "\n" not in message and name in message and flag in message and needle in message
    with pytest.raises(ValueError, match="must be"):
        TrainConfig.from_json({name: value})
    assert _one_line(capsys, [*TRAIN, "--out", str(tmp_path / "f"), flag, text]).endswith(message)
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({name: value}))
    line = _one_line(capsys, [*TRAIN, "--out", str(tmp_path / "c"), "--config", str(config)])
    assert line.endswith(message) and f"--config {config}" in line
    assert not (tmp_path / "f").exists() and not (tmp_path / "c").exists()  # refused before any work


def test_wrong_types_in_a_config_file_are_refused() -> None:
    for data, needle in (({"batch_size": "8"}, "batch_size"), ({"lr": True}, "lr"), ({"bf16": "yes"}, "bf16"),
                         ({"stop_after": 0}, "stop_after"), ({"max_train_sentences": 1.5}, "max_train_sentences"),
                         ({"data": ""}, "data"), ({"diffusion": {"max_len": 2}}, "max_len")):
        with pytest.raises(ValueError, match=needle):
            TrainConfig.from_json(data)
    cfg = TrainConfig.from_json({"max_minutes": None, "stop_after": None, "lr": 1})  # null and ints are fine
    assert cfg.max_minutes is None and cfg.lr == 1


def test_an_unknown_config_field_is_an_error_naming_the_nearest_known_one(tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match=r"unknown training setting 'batch_sise' \(did you mean 'batch_size'\?\)"):
        TrainConfig.from_json({"batch_sise": 8})
    with pytest.raises(ValueError, match=r"'diffusion.time_desing' \(did you mean 'diffusion.time_design'\?\)"):
        TrainConfig.from_json({"diffusion": {"time_desing": "lte"}})
    with pytest.raises(ValueError, match="unknown training setting 'zzz' \\(known: "):
        TrainConfig.from_json({"zzz": 1})
    config = tmp_path / "typo.json"
    config.write_text(json.dumps({"batch_size": 8, "log_evry": 3}))
    line = _one_line(capsys, [*TRAIN, "--out", str(tmp_path / "x"), "--config", str(config)])
    assert line.endswith("unknown training setting 'log_evry' (did you mean 'log_every'?)")


def test_bad_flag_syntax_is_one_line(tmp_path, capsys) -> None:
    line = _one_line(capsys, [*TRAIN, "--out", str(tmp_path / "x"), "--batch-size", "many"])
    assert "--batch-size" in line


def test_an_init_directory_whose_weights_are_not_a_state_dict_is_one_line(tmp_path, capsys) -> None:
    from dbert_model import tiny_config
    from dbert_model.tokenizer import load_tokenizer

    init = tmp_path / "init"
    init.mkdir()
    tiny_config(len(load_tokenizer(VOCAB).get_vocab()), hidden=32, layers=1, heads=2).to_json_file(str(init / "config.json"))
    torch.save({"x": 1}, init / "pytorch_model.bin")
    line = _one_line(capsys, [*[a if a != "tiny" else str(init) for a in TRAIN], "--out", str(tmp_path / "out")])
    assert str(init) in line and "state dict" in line
