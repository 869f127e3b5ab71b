"""dbert_model.load_for_bench: the entry point of bench/quality.py (steps vs time vs quality)."""

from __future__ import annotations

import pytest
import torch

from bench import quality
from bench.__main__ import main
from dbert_model import DiffusionSettings, TrainConfig, load_corpus, load_for_bench, train
from dbert_model.bench_api import whole_sentences

from .model_fixtures import CORPUS, VOCAB

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("bench_api") / "tiny"
    train(TrainConfig(out=str(out), data=str(CORPUS), init="tiny", tokenizer=str(VOCAB),
                      diffusion=DiffusionSettings(max_len=16), batch_size=16, lr=3e-3, warmup_steps=2,
                      max_steps=6, eval_every=6, eval_sentences=16, save_every=6, progress=False), log=lambda _: None)
    return str(out)


def test_load_for_bench_follows_the_quality_contract(checkpoint: str) -> None:
    bm = load_for_bench(checkpoint, CPU)
    assert bm.seq_len == 16 and bm.mask_id == bm.loaded.settings.special_ids["mask"]
    assert {"schedule", "top_k", "banned_ids", "fixed"} <= set(bm.generate_kwargs)
    results = quality.run_quality(load_for_bench, checkpoint, CPU, steps_list=(2, 8), n_samples=6, batch_size=4)
    assert [r["steps"] for r in results] == [2, 8]
    for r in results:
        assert 0.0 <= r["bleu4"] <= 1.0 and 0.0 <= r["self_bleu4"] <= 1.0
        assert r["perplexity"] > 1.0 and r["seconds"] > 0
        assert r["elbo_sentences"] == len(bm.test_split)  # the fixture's test split is small: all of it
    # the ELBO only scores sentences that fit whole (the per-word perplexity counts every word)
    test = load_corpus(CORPUS).test
    lengths = [len(i) for i in bm.loaded.tokenizer(test)["input_ids"]]
    assert len(bm.test_split) == sum(n <= 16 for n in lengths)
    short = whole_sentences(bm.loaded.tokenizer, test, 10)
    assert 0 < len(short) == sum(n <= 10 for n in lengths) < len(test)
    with pytest.raises(ValueError, match="no evaluation sentence fits"):
        whole_sentences(bm.loaded.tokenizer, test, 3)
    # every sample starts with [CLS] (fixed) and never contains [MASK]
    ids = torch.tensor([[bm.loaded.settings.special_ids["cls"]] + [5] * 15] * 2)
    assert bm.evaluate(ids)["bleu4"] >= 0.0
    with pytest.raises(ValueError, match="N >= 2"):
        bm.evaluate(ids[:1])


def test_bench_command_runs_the_quality_section(checkpoint: str, tmp_path) -> None:
    res = main(["--device", "cpu", "--quick", "--only", "quality", "--checkpoint", checkpoint,
                "--out", str(tmp_path), "--no-progress"])
    rows = res["quality"]["results"]
    assert [r["steps"] for r in rows] == [2, 4] and all(0.0 <= r["bleu4"] <= 1.0 for r in rows)
    text = "".join(p.read_text() for p in tmp_path.rglob("*.md"))
    assert "BLEU" in text or "bleu" in text
