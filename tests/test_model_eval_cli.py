"""``dbert eval``: the bound per sentence / wordpiece / word with its T, and ``--paper-metrics``."""

from __future__ import annotations

import json
import math

from dbert_model.checkpoint import resolve_checkpoint
from dbert_model.cli import main

from .model_fixtures import CORPUS, VOCAB


def test_eval_reports_every_normalisation_and_the_paper_metrics(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--data", str(CORPUS), "--tokenizer", str(VOCAB), "--init", "tiny",
                 "--max-len", "16", "--batch-size", "16", "--steps", "2", "--eval-every", "2", "--eval-sentences", "4",
                 "--log-every", "1", "--warmup", "1", "--hybrid-ce", "all", "--loss-norm", "sentence",
                 "--time-init", "zero", "--time-design", "lte", "--no-progress"]) == 0
    settings = json.loads((resolve_checkpoint(out) / "dbert.json").read_text())
    assert (settings["hybrid_ce"], settings["loss_norm"], settings["time_init"]) == ("all", "sentence", "zero")
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--steps", "4", "--samples", "4", "--max-sentences", "8",
                 "--paper-metrics", "--no-progress", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["T"] == 1000.0 and res["paper_T"] == 128.0
    assert res["ppl_per_wordpiece"] == math.exp(res["nats_per_wordpiece"])
    for key in ("paper_bleu4_mean", "paper_bleu4_pooled", "paper_self_bleu4_mean", "paper_self_bleu4_pooled"):
        assert 0 <= res[key] <= 1
    assert main(["eval", "--model", str(out), "--steps", "4", "--samples", "0", "--max-sentences", "8",
                 "--paper-metrics", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "T = 1000 steps" in text and "perplexity per word <=" in text and "perplexity per wordpiece <=" in text
    assert "128-step bound, real tokens" in text
