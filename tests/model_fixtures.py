"""Shared helpers of the dbert_model tests: the tiny fixture corpus, vocabulary and models."""

from __future__ import annotations

from pathlib import Path

import torch

from dbert_model import (
    DiffusionSettings,
    build_model,
    encode,
    load_corpus,
    load_tokenizer,
    tiny_config,
    token_counts,
)
from dbert_model.tokenizer import special_ids, vocab_fingerprint

FIXTURES = Path(__file__).parent / "fixtures"
CORPUS = FIXTURES / "tiny_corpus.txt"
VOCAB = FIXTURES / "tiny_vocab.txt"
MAX_LEN = 16


def tokenizer():
    return load_tokenizer(VOCAB)


def settings(tok=None, **overrides) -> DiffusionSettings:
    tok = tok or tokenizer()
    base = dict(max_len=MAX_LEN, vocab_size=len(tok.get_vocab()), vocab_sha256=vocab_fingerprint(tok),
                special_ids=special_ids(tok))
    base.update(overrides)
    return DiffusionSettings(**base)


def tiny_model(time_design: str = "tad", vocab_size: int | None = None, seed: int = 0):
    torch.manual_seed(seed)
    vocab_size = vocab_size or len(tokenizer().get_vocab())
    return build_model(tiny_config(vocab_size, hidden=32, layers=2, heads=2, max_len=MAX_LEN), time_design=time_design)


def train_ids(n: int | None = None) -> torch.Tensor:
    corpus = load_corpus(CORPUS)
    sentences = corpus.train[:n] if n else corpus.train
    return encode(tokenizer(), sentences, MAX_LEN).ids


def counts(ids: torch.Tensor) -> torch.Tensor:
    tok = tokenizer()
    return token_counts(ids, len(tok.get_vocab()), tok.pad_token_id)
