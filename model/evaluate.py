"""Evaluation: ELBO perplexity per word, BLEU-4 against the test set, Self-BLEU among samples.

* Perplexity (as in the paper): ``exp(sum of per-sentence NELBO in nats / number of words)``,
  words being whitespace-separated words of the original sentences. The NELBO is estimated by
  Monte Carlo with the model's own loss (D3PM: ``T sum r_i CE_i`` at a random step; MDLM: the
  continuous-time integrand), so it is an upper bound on the negative log-likelihood and the
  perplexity an upper bound too. With the spindle schedule the per-token weights use the clean
  tokens' information, as in training.
* BLEU-4 (NLTK ``corpus_bleu``, uniform 4-gram weights, smoothing method 1): each sample is
  scored against the whole test set as its references. Self-BLEU: each sample against the
  other samples. Texts are lower-cased word lists from the tokenizer's decoding, references are
  round-tripped through the same tokenizer so that both sides are normalised alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .data import EncodedSplit
from .losses import diffusion_loss
from .network import DiffusionBert
from .settings import DiffusionSettings

__all__ = ["sentence_tokens", "whole_only", "elbo_perplexity", "bleu4", "self_bleu", "normalise_references"]


def sentence_tokens(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``[N]`` tokens of each ``[CLS] x [SEP] [PAD]...`` row after ``[CLS]``: WordPieces + ``[SEP]``."""
    return (ids != pad_id).sum(1) - 1


def whole_only(split: EncodedSplit) -> tuple[EncodedSplit, int]:
    """``split`` without its sentences cut at ``max_len``, and how many were dropped.

    A cut sentence would be scored on fewer tokens than its words count and flatter the
    perplexity per word.
    """
    if len(split) == 0:
        raise ValueError("the evaluation split is empty")
    if split.whole is None or bool(split.whole.all()):
        return split, 0
    skipped = int((~split.whole).sum())
    if skipped == len(split):
        raise ValueError(
            f"every evaluation sentence is longer than the model's max_len ({split.ids.shape[1]} tokens): "
            "use shorter sentences or a model trained with a longer --max-len"
        )
    return type(split)(ids=split.ids[split.whole], words=split.words[split.whole]), skipped


@torch.no_grad()
def elbo_perplexity(
    model: DiffusionBert,
    settings: DiffusionSettings,
    token_info: torch.Tensor | None,
    split: EncodedSplit,
    *,
    samples: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    max_sentences: int | None = None,
    progress: bool = False,
    backend: str = "auto",
) -> dict[str, float]:
    """NELBO per sentence, per word and per token, and the perplexity bounds ``exp(nats per word)``
    and ``exp(nats per token)``.

    Tokens are those of :func:`sentence_tokens` (WordPieces + ``[SEP]``, as an autoregressive
    model predicts them); the NELBO itself also covers the ``[PAD]`` positions of the canvas.

    ``samples``: Monte Carlo draws of (t, mask) per sentence (more: less variance). Only whole
    sentences are scored (``split.whole``): one cut at ``max_len`` would be divided by the words
    of its full text and flatter the perplexity. ``max_sentences`` caps the whole sentences used;
    the result reports how many were skipped as truncated.
    """
    if samples < 1 or batch_size < 1:
        raise ValueError("samples and batch_size must be >= 1")
    device = next(model.parameters()).device
    split, skipped = whole_only(split)
    n = len(split) if max_sentences is None else min(len(split), max_sentences)
    was_training = model.training
    model.eval()
    total = 0.0
    batches = [(s, b) for s in range(samples) for b in range(0, n, batch_size)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(batches), desc="ELBO", unit="batch", leave=False)
    try:
        for index, (_rep, start) in enumerate(batches):
            ids = split.ids[start : start + batch_size].to(device)
            out = diffusion_loss(model, ids, settings=settings, token_info=token_info, seed=seed, offset=index, backend=backend)
            total += float(out.nelbo.sum())
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    nats_sentence = total / (samples * n)
    words = float(split.words[:n].sum())
    nats_word = total / samples / words
    tokens = float(sentence_tokens(split.ids[:n], settings.special_ids["pad"]).sum())
    nats_token = total / samples / tokens
    return {
        "sentences": float(n),
        "skipped_truncated": float(skipped),
        "tokens": tokens,
        "nelbo_per_sentence": nats_sentence,
        "nats_per_word": nats_word,
        "nats_per_token": nats_token,
        "perplexity": math.exp(min(nats_word, 700.0)),
        "perplexity_per_token": math.exp(min(nats_token, 700.0)),
    }


def _words(texts: Sequence[str]) -> list[list[str]]:
    return [t.lower().split() for t in texts]


def normalise_references(tokenizer: Any, sentences: Sequence[str], max_len: int) -> list[str]:
    """Round-trip reference sentences through the tokenizer (same casing and spacing as samples)."""
    enc = tokenizer(list(sentences), max_length=max_len, truncation=True, add_special_tokens=False)
    return [tokenizer.decode(ids) for ids in enc["input_ids"]]


def bleu4(samples: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 of ``samples``, each against all ``references`` (NLTK, smoothing method 1)."""
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    hyps = [h for h in _words(samples) if h]
    refs = [r for r in _words(references) if r]
    if not hyps or not refs:
        raise ValueError("BLEU needs at least one non-empty sample and one non-empty reference")
    return float(corpus_bleu([refs] * len(hyps), hyps, smoothing_function=SmoothingFunction().method1))


def self_bleu(samples: Sequence[str]) -> float:
    """Self-BLEU-4: each sample against all the other samples (lower = more diverse)."""
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    hyps = [h for h in _words(samples) if h]
    if len(hyps) < 2:
        raise ValueError("Self-BLEU needs at least two non-empty samples")
    refs = [hyps[:i] + hyps[i + 1 :] for i in range(len(hyps))]
    return float(corpus_bleu(refs, hyps, smoothing_function=SmoothingFunction().method1))
