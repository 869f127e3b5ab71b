"""Corpora, splits, tokenisation, token counts, and the evaluation metrics."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from dbert_model import bleu4, elbo_perplexity, encode, load_corpus, self_bleu, token_counts
from dbert_model.data import prepare_builtin_corpus, split_by_hash, split_sentences
from dbert_model.evaluate import bleu4_mean, discretised, normalise_references, paper_metrics, self_bleu_mean

from .model_fixtures import CORPUS, MAX_LEN, settings, tiny_model, tokenizer, train_ids


def test_split_by_hash_is_deterministic_disjoint_and_deduplicated() -> None:
    lines = [f"Sentence number {i} is here." for i in range(2000)] + ["Sentence number 5 is here."]
    a, b = split_by_hash(lines), split_by_hash(reversed(lines))
    assert sorted(a.train) == sorted(b.train) and sorted(a.test) == sorted(b.test)
    sets = [set(a.train), set(a.valid), set(a.test)]
    assert sum(map(len, sets)) == 2000 and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert 50 < len(a.test) < 150 and 50 < len(a.valid) < 150


def test_split_sentences() -> None:
    text = 'The fire spread. "Residents left," he said. Dr. Smith agreed!   Rain fell'
    assert split_sentences(text) == ["The fire spread.", '"Residents left," he said.', "Dr. Smith agreed!", "Rain fell"]


def test_user_corpus_file_and_directory(tmp_path) -> None:
    corpus = load_corpus(CORPUS)
    assert len(corpus.train) > 200 and corpus.valid and corpus.test
    (tmp_path / "train.txt").write_text("One two three four five six.\nSeven eight nine ten eleven.\n")
    (tmp_path / "valid.txt").write_text("A valid line.\n")
    (tmp_path / "test.txt").write_text("A test line.\n")
    d = load_corpus(tmp_path)
    assert d.train == ["One two three four five six.", "Seven eight nine ten eleven."] and d.test == ["A test line."]
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        load_corpus(tmp_path / "missing")


def test_encode_and_token_counts() -> None:
    tok = tokenizer()
    enc = encode(tok, ["The cat sees the house.", "A bird calls the lake every morning near the town."], 8)
    assert enc.ids.shape == (2, 8) and enc.words.tolist() == [5, 10]
    assert enc.ids[0, 0] == tok.cls_token_id and tok.sep_token_id in enc.ids[0].tolist()
    assert enc.ids[1, -1] == tok.sep_token_id  # truncated sentences still end with [SEP]
    counts = token_counts(enc.ids, len(tok.get_vocab()), tok.pad_token_id)
    assert counts[tok.pad_token_id] == 0 and counts[tok.cls_token_id] == 2
    assert int(counts.sum()) == int((enc.ids != tok.pad_token_id).sum())


@pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="the built-in corpus needs gensim")
def test_builtin_corpus_is_real_english_and_split(tmp_path) -> None:
    root = prepare_builtin_corpus(tmp_path / "corpus")
    train = (root / "train.txt").read_text().splitlines()
    test = (root / "test.txt").read_text().splitlines()
    assert len(train) > 10000 and 500 < len(test) < 2000 and not set(train) & set(test)
    assert all(line[0].isupper() and line[-1] in ".!?\"'" for line in train[:500])
    assert "Lee corpus" in (root / "SOURCES.txt").read_text()


def test_bleu_and_self_bleu() -> None:
    refs = ["the cat sat on the mat today", "a dog ran in the park at noon"]
    assert bleu4(["the cat sat on the mat today"], refs) == pytest.approx(1.0)
    assert bleu4(["zebra quantum violin orbit"], refs) < 0.05
    assert self_bleu(["the cat sat on the mat today"] * 3) == pytest.approx(1.0)
    assert self_bleu(["alpha beta gamma delta", "one two three four five"]) < 0.05
    with pytest.raises(ValueError):
        self_bleu(["only one"])
    assert normalise_references(tokenizer(), ["The Cat sees the house."], MAX_LEN) == ["the cat sees the house."]


def test_elbo_perplexity_is_exp_of_nats_per_word() -> None:
    from dbert_kernels import token_information

    from .model_fixtures import counts

    split = encode(tokenizer(), load_corpus(CORPUS).valid, MAX_LEN)
    ids = train_ids()
    res = elbo_perplexity(tiny_model(), settings(), token_information(counts(ids)), split, samples=2, batch_size=4)
    assert res["perplexity"] == pytest.approx(math.exp(res["nats_per_word"])) == res["ppl_per_word"]
    assert res["nats_per_word"] * float(split.words.sum()) == pytest.approx(res["nelbo_per_sentence"] * len(split))
    # per wordpiece: the real tokens' bound over the real tokens ([CLS], [SEP], [PAD] excluded)
    tok = tokenizer()
    specials = torch.tensor([tok.cls_token_id, tok.sep_token_id, tok.pad_token_id])
    pieces = int((~torch.isin(split.ids, specials)).sum())
    assert res["wordpieces"] == pieces and res["T"] == 1000.0
    assert res["nats_per_wordpiece"] * pieces == pytest.approx(res["nelbo_real_per_sentence"] * len(split))
    assert res["ppl_per_wordpiece"] == pytest.approx(math.exp(res["nats_per_wordpiece"]))
    assert 0 < res["nelbo_real_per_sentence"] < res["nelbo_per_sentence"]
    # an untrained model is close to uniform over V: about log V nats per scored token
    assert 0.5 * math.log(64) < res["nelbo_per_sentence"] / MAX_LEN < 2 * math.log(64)
    assert torch.isfinite(torch.tensor(res["perplexity"]))


def test_elbo_perplexity_skips_sentences_cut_at_max_len() -> None:
    from dbert_kernels import token_information

    from .model_fixtures import counts

    sentences = load_corpus(CORPUS).valid
    long = " ".join(sentences) + " " + " ".join(sentences)
    mixed = encode(tokenizer(), [sentences[0], long, *sentences[1:]], MAX_LEN)
    whole = encode(tokenizer(), sentences, MAX_LEN)
    assert bool(whole.whole.all()) and mixed.whole.tolist()[:2] == [True, False]
    info = token_information(counts(train_ids()))
    a = elbo_perplexity(tiny_model(), settings(), info, mixed, samples=1, batch_size=64)
    b = elbo_perplexity(tiny_model(), settings(), info, whole, samples=1, batch_size=64)
    assert a["skipped_truncated"] == 1.0 and b["skipped_truncated"] == 0.0
    assert a["sentences"] == b["sentences"] == len(sentences)
    assert a["nats_per_word"] == pytest.approx(b["nats_per_word"])
    with pytest.raises(ValueError, match="max_len"):
        elbo_perplexity(tiny_model(), settings(), info, encode(tokenizer(), [long], MAX_LEN))


def test_saved_datasets_dataset(tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    lines = [f"Sentence number {i} is a line of the corpus." for i in range(300)]
    datasets.Dataset.from_dict({"text": lines}).save_to_disk(str(tmp_path / "single"))
    single = load_corpus(tmp_path / "single")
    assert sorted(single.train + single.valid + single.test) == sorted(lines)
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": lines[:200]}),
        "validation": datasets.Dataset.from_dict({"text": lines[200:250]}),
        "test": datasets.Dataset.from_dict({"text": lines[250:]}),
    })
    dd.save_to_disk(str(tmp_path / "dict"))
    split = load_corpus(tmp_path / "dict")
    assert split.train == lines[:200] and split.valid == lines[200:250] and split.test == lines[250:]


def test_bleu_both_ways_on_hand_made_texts() -> None:
    """Known values: a sample equal to a reference scores 1 on its own, one sharing nothing scores
    0 (no smoothing), so the authors' mean is 0.5; pooled, the n-gram counts add up:
    p1..p4 = 6/9, 5/7, 4/5, 3/4 (NLTK counts at least one n-gram per sample) and the brevity
    penalty exp(1 - 12/9)."""
    refs = ["the cat sat on the mat"]
    samples = ["the cat sat on the mat", "a dog ran"]
    assert bleu4_mean(samples, refs) == pytest.approx(0.5)
    pooled = math.exp(1 - 12 / 9) * (6 / 9 * 5 / 7 * 4 / 5 * 3 / 4) ** 0.25
    assert bleu4(samples, refs) == pytest.approx(pooled, rel=1e-9)
    # Self-BLEU: two identical samples score 1 against each other, the third shares nothing
    trio = ["a b c d e", "a b c d e", "v w x"]
    assert self_bleu_mean(trio) == pytest.approx(2 / 3)
    pooled = math.exp(1 - 15 / 13) * (10 / 13 * 8 / 10 * 6 / 7 * 4 / 5) ** 0.25
    assert self_bleu(trio) == pytest.approx(pooled, rel=1e-9)
    with pytest.raises(ValueError):
        self_bleu_mean(["only one"])
    with pytest.raises(ValueError):
        bleu4_mean(["", " "], refs)


def test_paper_metrics_use_the_128_step_bound_over_real_tokens() -> None:
    from dbert_kernels import token_information

    from .model_fixtures import counts

    split = encode(tokenizer(), load_corpus(CORPUS).valid, MAX_LEN)
    info = token_information(counts(train_ids()))
    model, s = tiny_model(), settings()
    res = paper_metrics(model, s, info, split, ["the cat", "a dog"], ["the cat", "the dog"], elbo_samples=1,
                        batch_size=8)
    net, s128 = discretised(model, s, 128)
    direct = elbo_perplexity(net, s128, info, split, samples=1, batch_size=8)
    assert res["paper_T"] == 128.0 and s128.T == 128.0
    assert res["paper_nats_per_wordpiece"] == pytest.approx(direct["nats_per_wordpiece"])
    assert res["paper_nelbo_per_sentence"] == pytest.approx(direct["nelbo_real_per_sentence"])
    assert res["paper_bleu4_mean"] == pytest.approx(bleu4_mean(["the cat", "a dog"], ["the cat", "the dog"]))
    assert {"paper_bleu4_pooled", "paper_self_bleu4_mean", "paper_self_bleu4_pooled"} <= set(res)
