"""The speed-against-quality benchmark (bench/tradeoff.py) on tiny checkpoints trained here."""

from __future__ import annotations

import json

import torch

from bench.__main__ import main
from dbert_model import DiffusionSettings, TrainConfig, train

from .model_fixtures import CORPUS, MAX_LEN, VOCAB


def _train(out, **kw) -> str:
    train(TrainConfig(out=str(out), data=str(CORPUS), init="tiny", tokenizer=str(VOCAB), diffusion=DiffusionSettings(max_len=MAX_LEN),
                      batch_size=16, lr=3e-3, warmup_steps=1, max_steps=3, eval_every=3, eval_sentences=8,
                      save_every=3, log_every=3, progress=False, **kw), log=lambda _: None)
    return str(out)


def test_quick_tradeoff_run_times_and_judges_every_setting(tmp_path, capsys) -> None:
    torch.set_num_threads(1)
    bert = _train(tmp_path / "bert")
    gpt = _train(tmp_path / "gpt", arch="gpt2")
    judge = _train(tmp_path / "judge", arch="gpt2", seed=1)
    out = tmp_path / "results"
    res = main(["--device", "cpu", "--quick", "--only", "tradeoff", "--checkpoint", bert, "--baseline", gpt,
                "--judge", judge, "--out", str(out), "--no-progress"])
    t = res["tradeoff"]
    assert [r["setting"] for r in t["results"]] == ["GPT-2 kv-cache", "2 steps", "4 steps", "threshold 0.5, blocks 4, dual cache"]
    for r in t["results"]:
        assert [s["batch"] for s in r["speed"]] == [1, 2] and all(s["tokens_per_s"] > 0 for s in r["speed"])
        q = r["quality"]
        assert q["texts"] == len(q["samples"]) == 4 and q["gen_ppl"] > 1 and 0 <= q["bleu4"] <= 1 and 0 <= q["distinct_1"] <= 1
    assert t["perplexity"]["gpt2"]["bound"] == "exact" and t["perplexity"]["diffusionbert"]["perplexity_per_token"] > 1
    assert t["training"]["gpt2"]["arch"] == "gpt2" and t["training"]["judge"]["seed"] == 1
    prof = t["confidence_profile"]
    assert prof["positions"] > 0 and 0 < prof["median_top_prob"] <= 1 and 0 <= prof["argmax_accuracy"] <= 1
    saved = json.loads((out / "cpu-tradeoff.json").read_text())
    assert saved["tradeoff"]["results"] == json.loads(json.dumps(t["results"]))
    md = (out / "cpu-tradeoff.md").read_text()
    assert "| GPT-2 kv-cache |" in md and "| threshold 0.5, blocks 4, dual cache |" in md and "cpu-tradeoff.png" in md
    for r in t["results"][1:]:  # measured denoiser calls per sequence, within the setting's bound
        assert 1 <= r["denoiser_calls"] <= r["steps"], r
        assert f"| {r['setting']} | {r['denoiser_calls']:g} |" in md
    assert (out / "cpu-tradeoff.png").stat().st_size > 0
    assert "Speed against quality" in capsys.readouterr().out


def test_tradeoff_without_checkpoints_is_skipped_with_the_reason(tmp_path) -> None:
    res = main(["--device", "cpu", "--quick", "--only", "tradeoff", "--out", str(tmp_path), "--no-progress"])
    assert "--checkpoint, --baseline, --judge" in res["tradeoff"]["skipped"]
