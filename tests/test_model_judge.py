"""The judge: generative perplexity is exp(mean token NLL); degenerate text scores worse."""

from __future__ import annotations

import math

import pytest
import torch

from dbert_model import DiffusionSettings, TrainConfig, load_corpus, train
from dbert_model.ar import LoadedAR, build_gpt2
from dbert_model.judge import Judge, distinct_n, repetition_rate, score_texts

from .model_fixtures import CORPUS, MAX_LEN, VOCAB, settings, tokenizer


@pytest.fixture(scope="module")
def trained_judge(tmp_path_factory) -> Judge:
    """A tiny GPT-2 judge trained by the project's trainer on the fixture corpus (seconds)."""
    out = tmp_path_factory.mktemp("judge") / "judge"
    result = train(TrainConfig(
        out=str(out), arch="gpt2", data=str(CORPUS), init="tiny", tokenizer=str(VOCAB), diffusion=DiffusionSettings(max_len=MAX_LEN),
        batch_size=16, lr=5e-3, warmup_steps=2, max_steps=40, eval_every=20, eval_sentences=32, save_every=40,
        log_every=10, seed=1, progress=False,
    ), log=lambda _: None)
    first, last = result.validation[0], result.validation[-1]
    assert last["perplexity_per_token"] < first["perplexity_per_token"]
    return Judge.load(out)


def test_distinct_and_repetition_by_hand() -> None:
    texts = ["a b a b", "a c"]  # unigrams a b a b a c; bigrams ab ba ab | ac
    assert distinct_n(texts, 1) == 3 / 6
    assert distinct_n(texts, 2) == 3 / 4
    assert distinct_n(texts, 3) == 2 / 2
    assert repetition_rate(texts) == ((1 - 2 / 3) + 0.0) / 2
    assert distinct_n([""], 1) == 0.0 and repetition_rate(["a"]) == 0.0
    with pytest.raises(ValueError, match="n must be"):
        distinct_n(texts, 0)


@torch.no_grad()
def test_generative_perplexity_is_exp_of_the_mean_token_nll() -> None:
    tok, st = tokenizer(), settings()
    torch.manual_seed(0)
    from dbert_model import tiny_config

    model = build_gpt2(tiny_config(len(tok.get_vocab()), hidden=32, layers=2, heads=2, max_len=MAX_LEN), st).eval()
    judge = Judge(LoadedAR(model=model, settings=st, tokenizer=tok, token_counts=torch.zeros(1), path=None))
    texts = ["the dog likes a new book.", "", "my friend sees the old man in the market every sunday morning."]
    res = judge.score(texts, batch_size=2)
    total, tokens = 0.0, 0
    for text in texts:
        if not text:
            continue
        ids = tok(text)["input_ids"][:MAX_LEN]  # [CLS] pieces [SEP], cut to the judge's length
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids[:-1]])).logits.double(), -1)[0]
        total -= float(sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1)))
        tokens += len(ids) - 1
    assert (res["texts"], res["scored"], res["empty"], res["tokens"]) == (3, 2, 1, tokens)
    assert math.isclose(res["nll_per_token"], total / tokens, rel_tol=1e-6)
    assert math.isclose(res["gen_ppl"], math.exp(total / tokens), rel_tol=1e-6)
    assert res["truncated"] == (len(tok(texts[2])["input_ids"]) > MAX_LEN)


def test_degenerate_samples_score_worse_than_real_text(trained_judge: Judge) -> None:
    real = load_corpus(CORPUS).test[:16]
    degenerate = ["the the the the the the the the the the"] * 16  # one repeated (frequent) token
    good, bad = score_texts(trained_judge, real), trained_judge.score(degenerate)
    assert bad["gen_ppl"] > 2 * good["gen_ppl"]
    for n in (1, 2, 3):
        assert bad[f"distinct_{n}"] < good[f"distinct_{n}"]
    assert bad["repetition"] > good["repetition"]
    with pytest.raises(ValueError, match="no texts"):
        trained_judge.score([])
    with pytest.raises(FileNotFoundError, match="judge not found"):
        score_texts("/nonexistent/judge", real)
