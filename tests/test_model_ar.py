"""The GPT-2 baseline: shape, exact loss and perplexity, KV-cache sampling, the project's trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from dbert_model import DiffusionSettings, TrainConfig, decode, encode, load_corpus, tiny_config, train
from dbert_model.ar import ar_loss, ar_perplexity, build_gpt2, is_ar_checkpoint, load_ar, sample_ar
from dbert_model.checkpoint import read_trainer_state, resolve_checkpoint
from dbert_model.generation import banned_ids

from .model_fixtures import CORPUS, MAX_LEN, VOCAB, settings, tokenizer


def _gpt2(seed: int = 0):
    torch.manual_seed(seed)
    tok = tokenizer()
    return build_gpt2(tiny_config(len(tok.get_vocab()), hidden=32, layers=2, heads=2, max_len=MAX_LEN), settings(tok)).eval()


@torch.no_grad()
def _hand_nll(model, row: list[int]) -> float:
    """Sum of -log p(row[i] | row[:i]) for i >= 1, from an unpadded forward pass."""
    ids = torch.tensor([row])
    logp = torch.log_softmax(model(input_ids=ids[:, :-1]).logits.double(), -1)[0]
    return -float(sum(logp[i, row[i + 1]] for i in range(len(row) - 1)))


def _config(out, **overrides) -> TrainConfig:
    base = dict(
        out=str(out), arch="gpt2", data=str(CORPUS), init="tiny", tokenizer=str(VOCAB), diffusion=DiffusionSettings(max_len=MAX_LEN),
        batch_size=16, lr=3e-3, warmup_steps=2, max_steps=8, eval_every=4, eval_sentences=16, save_every=4,
        log_every=2, progress=False,
    )
    base.update(overrides)
    return TrainConfig(**base)


def test_gpt2_has_the_bert_shape_and_special_ids() -> None:
    model, sp = _gpt2(), settings().special_ids
    c = model.config
    assert (c.n_embd, c.n_layer, c.n_head, c.n_inner, c.n_positions) == (32, 2, 2, 128, MAX_LEN)
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (sp["cls"], sp["sep"], sp["pad"])
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_ar_loss_is_the_exact_nll_of_each_unpadded_sentence() -> None:
    model, tok = _gpt2(), tokenizer()
    ids = encode(tok, load_corpus(CORPUS).test[:6], MAX_LEN).ids
    pad = tok.pad_token_id
    assert bool((ids == pad).any())  # ragged rows: padding must not change anything
    with torch.no_grad():
        out = ar_loss(model, ids, pad)
    rows = [[t for t in r if t != pad] for r in ids.tolist()]
    hand = torch.tensor([_hand_nll(model, r) for r in rows], dtype=torch.float64)
    assert out.tokens.tolist() == [len(r) - 1 for r in rows]
    torch.testing.assert_close(out.nll.double(), hand, rtol=1e-5, atol=1e-5)
    assert math.isclose(float(out.loss), float(hand.sum()) / sum(len(r) - 1 for r in rows), rel_tol=1e-5)


def test_ar_perplexity_per_word_and_per_token_skip_cut_sentences() -> None:
    model, tok = _gpt2(), tokenizer()
    sentences = load_corpus(CORPUS).test[:10]
    long = " ".join(sentences[:3])  # longer than MAX_LEN tokens: skipped
    split = encode(tok, [*sentences, long], MAX_LEN)
    res = ar_perplexity(model, split, tok.pad_token_id, batch_size=3)
    whole = [s for s, w in zip([*sentences, long], split.whole.tolist(), strict=True) if w]
    assert res["skipped_truncated"] == 1 and res["sentences"] == len(whole)
    rows = [tok(s)["input_ids"] for s in whole]
    total = sum(_hand_nll(model, r) for r in rows)
    words = sum(len(s.split()) for s in whole)
    tokens = sum(len(r) - 1 for r in rows)
    assert res["tokens"] == tokens
    assert math.isclose(res["perplexity"], math.exp(total / words), rel_tol=1e-5)
    assert math.isclose(res["perplexity_per_token"], math.exp(total / tokens), rel_tol=1e-5)


def test_ar_loss_of_the_shards_sums_to_the_whole_batch() -> None:
    model, tok = _gpt2(), tokenizer()
    ids = encode(tok, load_corpus(CORPUS).test[:7], MAX_LEN).ids
    pad = tok.pad_token_id
    with torch.no_grad():
        whole = ar_loss(model, ids, pad)
        parts = [ar_loss(model, ids, pad, shard=slice(a, b)) for a, b in ((0, 2), (2, 3), (3, 7))]
    assert math.isclose(sum(float(p.loss) for p in parts), float(whole.loss), rel_tol=1e-5)
    torch.testing.assert_close(torch.cat([p.nll for p in parts]), whole.nll, rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.cat([p.tokens for p in parts]), whole.tokens)


def test_arch_round_trips_through_the_saved_config_new_and_flat_forms() -> None:
    cfg = _config("x")
    assert cfg.arch == "gpt2" and TrainConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    flat = {**{k: v for k, v in cfg.to_json().items() if k != "diffusion"}, "max_len": MAX_LEN}  # older checkpoints
    assert TrainConfig.from_json(flat) == cfg
    assert TrainConfig.from_json({k: v for k, v in flat.items() if k != "arch"}).arch == "diffusion"


def test_sample_ar_fills_the_canvas_without_banned_tokens_and_is_seeded() -> None:
    model, tok, st = _gpt2(), tokenizer(), settings()
    a = sample_ar(model, st, tok, n=5, seq_len=12, top_k=0, seed=3)
    b = sample_ar(model, st, tok, n=5, seq_len=12, top_k=0, seed=3)
    static = sample_ar(model, st, tok, n=5, seq_len=12, top_k=0, seed=3, cache="static")
    assert a.shape == (5, 12) and torch.equal(a, b) and torch.equal(a, static)
    assert bool((a[:, 0] == st.special_ids["cls"]).all())
    banned = {*banned_ids(tok, st), st.special_ids["pad"]}
    assert not set(a[:, 1:].flatten().tolist()) & banned
    assert not torch.equal(a, sample_ar(model, st, tok, n=5, seq_len=12, top_k=0, seed=4))
    for seed in range(4):  # a row that writes [SEP] early still fills the whole canvas
        assert sample_ar(model, st, tok, n=1, seq_len=MAX_LEN, top_k=0, seed=seed).shape == (1, MAX_LEN)
    assert len(decode(tok, a, st)) == 5
    with pytest.raises(ValueError, match="positions"):
        sample_ar(model, st, tok, n=1, seq_len=MAX_LEN + 1)
    with pytest.raises(ValueError, match="cache"):
        sample_ar(model, st, tok, n=1, cache="paged")


def test_trainer_trains_gpt2_end_to_end_and_resumes_exactly(tmp_path) -> None:
    straight = train(_config(tmp_path / "a"), log=lambda _: None)
    assert straight.steps == 8 and all(math.isfinite(h["loss"]) for h in straight.history)
    assert straight.validation[-1]["perplexity"] < straight.validation[0]["perplexity"] * 1.5
    assert is_ar_checkpoint(tmp_path / "a")
    train(_config(tmp_path / "b", stop_after=4), log=lambda _: None)
    assert train(_config(tmp_path / "b"), log=lambda _: None).steps == 8
    a = load_file(str(resolve_checkpoint(tmp_path / "a") / "model.safetensors"))
    b = load_file(str(resolve_checkpoint(tmp_path / "b") / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_trainer_state(tmp_path / "a")["config"]["arch"] == "gpt2"
    assert is_ar_checkpoint(resolve_checkpoint(tmp_path / "a")) and not is_ar_checkpoint(tmp_path / "nope")
    loaded = load_ar(tmp_path / "a")
    assert loaded.path == resolve_checkpoint(tmp_path / "a")
    assert loaded.settings.max_len == MAX_LEN and loaded.model.config.n_embd == 64
    with pytest.raises(ValueError, match="another architecture"):
        train(_config(tmp_path / "a", arch="diffusion", max_steps=9), log=lambda _: None)
    with pytest.raises(ValueError, match="arch must be one of"):
        train(_config(tmp_path / "c", arch="lstm"), log=lambda _: None)

