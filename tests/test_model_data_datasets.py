"""Corpora through Hugging Face `datasets`: saved datasets, several text files, cached tokenisation."""

from __future__ import annotations

import os

import datasets
import pytest
import torch

from dbert_model import DiffusionSettings, TrainConfig, encode, load_corpus, train
from dbert_model.checkpoint import read_trainer_state
from dbert_model.data import encode_cached

from .model_fixtures import CORPUS, VOCAB, tokenizer


def _config(out, data) -> TrainConfig:
    return TrainConfig(out=str(out), data=str(data), init="tiny", tokenizer=str(VOCAB),
                       diffusion=DiffusionSettings(max_len=12), batch_size=8, lr=3e-3, warmup_steps=1, max_steps=2,
                       eval_every=100, eval_sentences=8, save_every=2, log_every=1, progress=False)


def test_cached_tokenisation_equals_encode_and_is_reused(tmp_path) -> None:
    tok = tokenizer()
    sentences = load_corpus(CORPUS).train
    direct = encode(tok, sentences, 10)
    first = encode_cached(tok, sentences, 10, cache=tmp_path)
    assert torch.equal(first.ids, direct.ids) and torch.equal(first.words, direct.words)
    assert torch.equal(first.whole, direct.whole) and not bool(first.whole.all())  # some are cut at 10
    (file,) = tmp_path.glob("*.arrow")
    stamp = file.stat().st_mtime_ns
    again = encode_cached(tok, sentences, 10, cache=tmp_path)
    assert torch.equal(again.ids, direct.ids) and file.stat().st_mtime_ns == stamp  # read from the cache
    encode_cached(tok, sentences, 11, cache=tmp_path)
    assert len(list(tmp_path.glob("*.arrow"))) == 2  # another max_len is another entry


def test_training_from_a_saved_datasets_directory(tmp_path) -> None:
    corpus = load_corpus(CORPUS)
    saved = tmp_path / "lm1b_like"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": CORPUS.read_text().splitlines()}),
        "test": datasets.Dataset.from_dict({"text": corpus.test}),
    }).save_to_disk(str(saved))  # LM1B's shape: train and test splits, a "text" column
    loaded = load_corpus(saved)  # the validation split is cut from train by hash, as for a text file
    assert (loaded.train, loaded.valid, loaded.test) == (corpus.train, corpus.valid, corpus.test)
    result = train(_config(tmp_path / "run", saved), log=lambda _: None)
    assert result.steps == 2 and read_trainer_state(tmp_path / "run")["config"]["data"] == str(saved)


def test_training_from_several_text_files(tmp_path) -> None:
    lines = CORPUS.read_text().splitlines()
    (tmp_path / "a.txt").write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(lines[len(lines) // 2 :]) + "\n")
    listed = load_corpus(f"{tmp_path / 'a.txt'},{tmp_path / 'b.txt'}")
    globbed = load_corpus(str(tmp_path / "*.txt"))
    whole = load_corpus(CORPUS)
    assert listed.train == globbed.train == whole.train and listed.test == whole.test
    result = train(_config(tmp_path / "run", tmp_path / "*.txt"), log=lambda _: None)
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


def test_a_name_that_is_not_in_the_datasets_cache_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="name of a datasets dataset in the local cache"):
        load_corpus("no-such-dataset-" + os.urandom(4).hex())
