"""bench.decoding: text statistics on hand-made texts and a smoke run on a tiny checkpoint."""

from __future__ import annotations

import json

import pytest

from bench.decoding import main, text_stats
from dbert_model.cli import main as dbert

from .model_fixtures import CORPUS, VOCAB


def test_text_stats_on_known_texts():
    stats = text_stats(["a b a b a b", "c d"])
    # unigrams: a b a b a b c d -> 4 unique of 8; bigrams: ab ba ab ba ab cd -> 3 of 6
    assert stats["distinct_1"] == 0.5 and stats["distinct_2"] == 0.5
    # 4-grams of text 1: abab baba abab -> 1 of 3 repeated; text 2 has none (skipped)
    assert stats["rep_4"] == pytest.approx(1 / 3) and stats["mean_words"] == 4.0


def test_smoke_run_writes_md_and_json(tmp_path):
    ckpt = tmp_path / "run"
    assert dbert(["train", "--out", str(ckpt), "--data", str(CORPUS), "--tokenizer", str(VOCAB), "--init", "tiny",
                  "--max-len", "16", "--batch-size", "16", "--steps", "2", "--eval-every", "2",
                  "--eval-sentences", "8", "--no-progress"]) == 0
    out = tmp_path / "res"
    assert main(["--model", str(ckpt), "--data", str(CORPUS), "--batches", "2", "--lengths", "12", "--repeats", "1",
                 "--profile-sentences", "8", "--settings", "posterior 16 steps;threshold 0.9, <= 16 calls, blocks 16, dual cache",
                 "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    names = [r["strategy"] for r in res["runs"]]
    assert names == ["GPT-2 KV cache", "posterior 16 steps", "threshold 0.9, <= 16 calls, blocks 16, dual cache"]
    assert all(r["tokens_per_s"] > 0 for r in res["runs"]) and 0 <= res["profile"]["argmax_accuracy"] <= 1
    assert "| 2 | 12 | posterior 16 steps |" in out.with_suffix(".md").read_text()
