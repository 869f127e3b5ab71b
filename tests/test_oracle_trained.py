"""``bench/oracle_trained.py`` end to end at tiny size: corpus, both trainings (a few steps), NLLs, bench, report."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from bench import oracle_trained as ot  # noqa: E402


def test_corpus_and_tokenizer_map_token_words_one_to_one(tmp_path):
    cfg = ot.QUICK
    ot.write_corpus(cfg, tmp_path)
    tok = ot.check_tokenizer(cfg, tmp_path)
    assert len(tok) == cfg.vocab + len(ot.SPECIALS)
    lines = (tmp_path / "train.txt").read_text().splitlines()
    assert len(lines) == cfg.n_train and all(len(ln.split()) == cfg.length for ln in lines)
    ids = torch.tensor([[tok.cls_token_id, 5, 6, 7, tok.sep_token_id], [tok.cls_token_id, 5, tok.sep_token_id, 7, 8]])
    chain_ids, ok = ot.to_chain_ids(ids, 3, cfg.vocab)
    assert ok.tolist() == [True, False] and chain_ids[0].tolist() == [0, 1, 2]


def test_pipeline_end_to_end(tmp_path):
    res = ot.main(["--only", "oracle-trained", "--quick"], tmp_path / "out", True, work=tmp_path / "work",
                  progress=False)
    nll = res["nll"]
    # a cross-entropy / an upper bound can never beat the entropy rate by more than the test set's noise
    assert nll["gpt2"]["nll_per_token"] > nll["entropy_rate"] - 5 * nll["chain_nll_se"]
    assert nll["diffusion"]["nelbo_per_token_bound"] > nll["entropy_rate"] - 5 * nll["chain_nll_se"]
    rows = res["bench"]["rows"]
    assert rows[0]["model"] == "chain" and rows[1]["model"] == "gpt2"
    assert len(rows) == 2 + len(ot.settings(ot.QUICK))
    for r in rows[1:]:
        assert r["unparsed"] == 0  # only token words are allowed at the free positions
        for b in ot.QUICK.batches:
            assert r[f"tokens_per_s_b{b}"] > 0
    assert set(res["training"]) == {"diffusion", "gpt2"}
    saved = json.loads((tmp_path / "out" / "oracle_trained_cpu.json").read_text())
    assert saved["nll"]["entropy_rate"] == pytest.approx(nll["entropy_rate"])
    md = (tmp_path / "out" / "oracle_trained_cpu.md").read_text()
    assert "entropy rate" in md and ("breaks down" in md or "quality holds" in md)
