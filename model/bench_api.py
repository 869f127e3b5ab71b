"""The entry point of ``bench/quality.py`` (steps versus time versus quality, the paper's Table 3).

:func:`load_for_bench` turns a dbert checkpoint into what the benchmark needs: a denoiser, the
``generate`` arguments the model was trained for, and an ``evaluate(samples)`` that scores
generated ids with BLEU-4 against the test split, Self-BLEU-4 among the samples, and the ELBO
perplexity of the model on the test sentences that fit whole in the model's length (the same for
every step count: the bound of the T-step model, computed once and cached).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .build import DiffusionBertDenoiser
from .checkpoint import LoadedModel, load_checkpoint
from .data import EncodedSplit, encode, load_corpus
from .evaluate import bleu4, elbo_perplexity, normalise_references, self_bleu
from .generation import banned_ids, decode

__all__ = ["BenchModel", "load_for_bench", "whole_sentences"]


def whole_sentences(tokenizer: Any, sentences: list[str], max_len: int) -> list[str]:
    """The sentences that fit whole in ``max_len`` tokens with ``[CLS]``/``[SEP]``.

    The perplexity per word divides by the words of the full sentence, so a truncated sentence
    would be under-scored: the ELBO is computed on whole sentences only.
    """
    lengths = [len(ids) for ids in tokenizer(list(sentences))["input_ids"]]
    fitting = [s for s, n in zip(sentences, lengths, strict=True) if n <= max_len]
    if not fitting:
        raise ValueError(f"no evaluation sentence fits in max_len {max_len} tokens: use a model with a longer max_len")
    return fitting


@dataclass
class BenchModel:
    """A loaded checkpoint plus its test data, in the shape ``bench.quality.BenchModel`` asks for.

    ``elbo_sentences``: test sentences scored by the ELBO (None: all); ``elbo_samples``: Monte
    Carlo draws per sentence.
    """

    loaded: LoadedModel
    test_split: EncodedSplit
    references: list[str]
    top_k: int | None = 30
    elbo_sentences: int | None = None
    elbo_samples: int = 1
    _elbo: dict[str, float] | None = field(default=None, repr=False)

    @property
    def denoiser(self) -> DiffusionBertDenoiser:
        return DiffusionBertDenoiser(self.loaded.model)

    @property
    def mask_id(self) -> int:
        return int(self.loaded.settings.special_ids["mask"])

    @property
    def seq_len(self) -> int:
        return int(self.loaded.settings.max_len)

    @property
    def generate_kwargs(self) -> dict[str, Any]:
        """Schedule, top-k (the paper's 30), banned ids and ``[CLS]`` fixed at position 0."""
        settings = self.loaded.settings
        fixed = torch.full((self.seq_len,), -1, dtype=torch.int64)
        fixed[0] = settings.special_ids["cls"]
        return {"schedule": settings.build_schedule(), "top_k": self.top_k,
                "banned_ids": banned_ids(self.loaded.tokenizer, settings), "fixed": fixed}

    def elbo(self) -> dict[str, float]:
        """ELBO perplexity on the test split (computed on first use, then cached)."""
        if self._elbo is None:
            device = next(self.loaded.model.parameters()).device
            self._elbo = elbo_perplexity(
                self.loaded.model, self.loaded.settings, self.loaded.token_info().to(device), self.test_split,
                samples=self.elbo_samples, max_sentences=self.elbo_sentences,
            )
        return self._elbo

    def evaluate(self, samples: torch.Tensor) -> dict[str, float]:
        """``samples``: ``[N, seq_len]`` int64 generated ids (N >= 2). Returns ``bleu4`` (higher is
        better), ``self_bleu4`` (lower: more diverse), ``perplexity`` (ELBO bound on the test split,
        lower is better) and ``nats_per_word``."""
        if samples.dim() != 2 or samples.shape[0] < 2:
            raise ValueError(f"evaluate needs [N >= 2, seq_len] ids, got shape {tuple(samples.shape)}")
        texts = decode(self.loaded.tokenizer, samples.cpu(), self.loaded.settings)
        elbo = self.elbo()
        return {"bleu4": bleu4(texts, self.references), "self_bleu4": self_bleu(texts),
                "perplexity": elbo["perplexity"], "nats_per_word": elbo["nats_per_word"],
                "elbo_sentences": elbo["sentences"]}


def load_for_bench(
    checkpoint: str | Path,
    device: torch.device | str = "cpu",
    *,
    data: str | None = None,
    elbo_sentences: int | None = None,
    top_k: int | None = 30,
) -> BenchModel:
    """Load ``checkpoint`` for ``bench/quality.py``.

    ``data``: corpus whose test split is used (default: the one the checkpoint was trained on).
    ``elbo_sentences``: cap on the test sentences scored by the ELBO (default: all on CUDA, 512
    on the CPU, where the full split is slow).
    """
    device = torch.device(device)
    loaded = load_checkpoint(checkpoint, device=device)
    if data is None:
        state = loaded.path / "trainer_state.json"
        data = json.loads(state.read_text())["config"]["data"] if state.is_file() else "builtin"
    corpus = load_corpus(data)
    sentences = corpus.test or corpus.valid
    if not sentences:
        raise ValueError(f"the corpus {data} has no test or valid sentences to evaluate against")
    if elbo_sentences is None and device.type == "cpu":
        elbo_sentences = 512
    settings = loaded.settings
    return BenchModel(
        loaded=loaded, test_split=encode(loaded.tokenizer, whole_sentences(loaded.tokenizer, sentences, settings.max_len),
                                         settings.max_len),
        references=normalise_references(loaded.tokenizer, sentences, settings.max_len),
        top_k=top_k, elbo_sentences=elbo_sentences,
    )
