"""The dbert command: help, train -> generate -> eval on the tiny fixture, clear errors."""

from __future__ import annotations

import json

import pytest

from dbert_model.cli import main

from .model_fixtures import CORPUS, VOCAB


@pytest.mark.parametrize("command", ["train", "generate", "eval"])
def test_help(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0 and f"usage: dbert {command}" in capsys.readouterr().out


def test_train_generate_eval(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--data", str(CORPUS), "--tokenizer", str(VOCAB), "--init", "tiny",
            "--max-len", "16", "--batch-size", "16", "--steps", "6", "--eval-every", "3", "--eval-sentences", "8",
            "--log-every", "3", "--lr", "3e-3", "--warmup", "1", "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "step     3  loss" in text and "valid @ 6" in text and "done: 6 steps" in text
    assert main(["generate", "--model", str(out), "-n", "3", "--steps", "4", "--no-progress", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert main(["generate", "--model", str(out), "-n", "3", "--steps", "4", "--no-progress", "--seed", "1"]) == 0
    lines = first.strip().splitlines()
    assert capsys.readouterr().out == first and len(lines) == 3 and lines[0].startswith("[0] ")
    assert main(["eval", "--model", str(out), "--steps", "4", "--samples", "4", "--no-progress", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["data"] == str(CORPUS) and res["perplexity"] > 1 and 0 <= res["bleu4"] <= 1 and 0 <= res["self_bleu4"] <= 1
    # resuming with another time design is refused with a message, not a traceback
    assert main([*args[:-1], "--time-design", "lte", "--steps", "8", "--no-progress"]) == 2
    assert "cannot resume" in capsys.readouterr().err


def test_clear_errors(tmp_path, capsys) -> None:
    assert main(["generate", "--model", str(tmp_path / "missing")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--steps", "0"])
    assert exc.value.code == 2 and "--steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--time-design", "sideways"])
    assert "invalid choice" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "x"), "--data", str(tmp_path / "none"), "--init", "tiny",
                 "--tokenizer", str(VOCAB), "--no-progress"]) == 2
    assert "corpus not found" in capsys.readouterr().err


def test_the_recipe_config_file_sets_the_train_defaults_and_flags_override_it(tmp_path, capsys) -> None:
    from pathlib import Path

    from dbert_model.cli import _config_file_defaults, build_parser, train_config

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "bert-base-lm1b.json"
    parser = build_parser()
    argv = ["train", "--config", str(recipe), "--steps", "7", "--lambda", "0.2"]
    _config_file_defaults(parser, argv)
    cfg = train_config(parser.parse_args(argv))
    assert (cfg.data, cfg.init, cfg.batch_size, cfg.bf16) == ("lm1b", "bert-base-uncased", 256, True)
    assert cfg.diffusion.T == 2048 and cfg.diffusion.max_len == 64 and cfg.diffusion.time_design == "tad"
    assert cfg.max_steps == 7 and cfg.diffusion.spindle_lambda == 0.2  # the flags win
    bad = tmp_path / "bad.json"
    bad.write_text('{"diffusion": {"loss": "l2"}}')
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(bad)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "--config" in err and "loss" in err


def test_gpt2_baseline_and_judge_through_the_cli(tmp_path, capsys) -> None:
    common = ["--data", str(CORPUS), "--tokenizer", str(VOCAB), "--init", "tiny", "--max-len", "16", "--batch-size",
              "16", "--steps", "4", "--eval-every", "4", "--eval-sentences", "8", "--log-every", "2", "--lr", "3e-3",
              "--warmup", "1", "--no-progress"]
    gpt, bert = tmp_path / "gpt", tmp_path / "bert"
    assert main(["train", "--arch", "gpt2", "--out", str(gpt), *common]) == 0
    assert "(exact)" in capsys.readouterr().out
    assert main(["train", "--out", str(bert), *common]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(gpt), "--samples", "4", "--judge", str(gpt), "--no-progress", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["arch"] == "gpt2" and res["perplexity_per_token"] > 1 and 0 <= res["bleu4"] <= 1
    assert res["judged"]["texts"] == 4 and res["judged"]["gen_ppl"] > 1
    assert main(["eval", "--model", str(bert), "--steps", "4", "--samples", "4", "--judge", str(gpt), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "ELBO bound" in text and "judge        generative PPL" in text
    assert main(["eval", "--model", str(bert), "--judge", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "judge not found" in capsys.readouterr().err
    assert main(["eval", "--model", str(bert), "--judge", str(bert), "--no-progress"]) == 2
    assert "not a GPT-2 checkpoint" in capsys.readouterr().err
    assert main(["generate", "--model", str(gpt), "-n", "2", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("[0] ")
