"""Evaluation: ELBO bounds (per sentence, wordpiece, word), BLEU-4 and Self-BLEU.

* NELBO (:func:`elbo_perplexity`): estimated by Monte Carlo with the model's own loss (D3PM:
  ``T sum r_i CE_i`` at a random step, the exact posterior; MDLM: the continuous-time integrand),
  an upper bound on the negative log-likelihood, for the bound's ``T`` (the model's T, or fewer
  steps with :func:`discretised`). Two sums are kept per sentence:

  - the full bound over every noisable position (real tokens, ``[SEP]`` and ``[PAD]``): the
    likelihood of the sentence *with its length*; per word (whitespace words of the original
    sentences) it gives ``perplexity`` (= ``ppl_per_word``), comparable with a left-to-right LM
    that predicts the end of the sentence;
  - the real tokens only (the authors' code): ``nelbo_real_per_sentence`` and, divided by the
    real wordpieces, ``nats_per_wordpiece`` and ``ppl_per_wordpiece``.

  With the spindle schedule the per-token weights use the clean tokens' information, as in
  training. A "perplexity per sentence" is not reported: ``exp`` of a whole sentence's NELBO is
  its inverse likelihood bound, not a perplexity.
* BLEU-4 against the test set (every test sentence is a reference of every sample) and Self-BLEU
  (each sample against the other samples), NLTK, uniform 4-gram weights, two ways:
  :func:`bleu4` / :func:`self_bleu` pool all samples in one ``corpus_bleu`` with smoothing
  method 1; :func:`bleu4_mean` / :func:`self_bleu_mean` are the authors' definition: the mean
  over samples of each sample's own ``corpus_bleu``, without smoothing (a sample sharing no
  4-gram with its references scores 0). An empty sample (``[SEP]`` or ``[PAD]`` right after
  ``[CLS]``) is left out of the pooled scores but counts as 0 in the means, as the authors divide
  by every line of their sample file. Texts are lower-cased word lists from the tokenizer's
  decoding; references are round-tripped through the same tokenizer so that both sides are
  normalised alike.
* :func:`paper_metrics`: what the paper's Table 2 reports, as far as the paper and the authors'
  code define it: the bound of the model as a 128-step diffusion (their T = 2048 evaluated with
  step 16), real tokens only, per sentence and per wordpiece, and BLEU / Self-BLEU of samples
  generated with 128 steps, as the mean of per-sample scores next to the pooled ones. The bound
  here uses the exact posterior; the authors' spindle posterior is not a proper bound (see
  ``python -m bench.paper.bound``), so spindle numbers are not comparable with Table 2 as they stand.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from .data import EncodedSplit
from .losses import diffusion_loss
from .network import DiffusionBert
from .settings import DiffusionSettings

__all__ = [
    "sentence_tokens", "whole_only", "elbo_perplexity", "bleu4", "self_bleu", "bleu4_mean", "self_bleu_mean",
    "normalise_references", "discretised", "paper_metrics", "PAPER_STEPS", "empty_samples",
]

#: Steps of the paper's Table 2: the bound and the sampler as a 128-step diffusion.
PAPER_STEPS = 128


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
    """NELBO per sentence, per wordpiece and per word, and the perplexity bounds from them.

    Returns a dict: ``T`` (the bound's number of steps), ``sentences``, ``skipped_truncated``,
    ``words``, ``wordpieces`` (real tokens), ``nelbo_per_sentence`` (full bound: real tokens,
    ``[SEP]``, ``[PAD]``), ``nelbo_real_per_sentence`` (real tokens only), ``nats_per_wordpiece``
    and ``ppl_per_wordpiece`` (real tokens), ``nats_per_word`` and ``perplexity`` (full bound per
    word; ``ppl_per_word`` is the same number).

    ``tokens``, ``nats_per_token`` and ``perplexity_per_token``: the full bound per token of
    :func:`sentence_tokens` (WordPieces + ``[SEP]``, as an autoregressive model predicts them),
    for comparison with a GPT-2 baseline's exact perplexity per token.

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
    total = total_real = 0.0
    n_real = 0
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
            total_real += float(out.nelbo_real.sum())
            n_real += out.n_real
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    words = float(split.words[:n].sum())
    nats_word = total / samples / words
    nats_piece = total_real / max(n_real, 1)
    ppl_word = math.exp(min(nats_word, 700.0))
    tokens = float(sentence_tokens(split.ids[:n], settings.special_ids["pad"]).sum())
    nats_token = total / samples / tokens
    return {
        "T": float(settings.T),
        "sentences": float(n),
        "skipped_truncated": float(skipped),
        "words": words,
        "wordpieces": n_real / samples,
        "nelbo_per_sentence": total / (samples * n),
        "nelbo_real_per_sentence": total_real / (samples * n),
        "nats_per_wordpiece": nats_piece,
        "ppl_per_wordpiece": math.exp(min(nats_piece, 700.0)),
        "nats_per_word": nats_word,
        "ppl_per_word": ppl_word,
        "perplexity": ppl_word,
        "tokens": tokens,
        "nats_per_token": nats_token,
        "perplexity_per_token": math.exp(min(nats_token, 700.0)),
    }


class _TimeRescaled(torch.nn.Module):
    """The network seen as a ``k``-step model: time ``t`` in ``[0, k]`` is fed as ``t T / k``."""

    def __init__(self, inner: torch.nn.Module, factor: float) -> None:
        super().__init__()
        self.inner = inner
        self.factor = factor

    def forward(self, ids: torch.Tensor, t: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner(ids, t=t * self.factor, rows=rows)


def discretised(model: DiffusionBert, settings: DiffusionSettings, steps: int) -> tuple[Any, DiffusionSettings]:
    """``(model, settings)`` of the same network as a ``steps``-step diffusion (``T = steps``).

    The schedules are functions of ``t / T``, so with the network fed ``t T / steps`` this is the
    trained forward process observed at ``steps`` equally spaced times: its D3PM bound is the
    ELBO of the ``steps``-step sampler (the authors' ``eval_step_size = T / steps``).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return _TimeRescaled(model, float(settings.T) / steps), replace(settings, T=float(steps), loss="d3pm")


def paper_metrics(
    model: DiffusionBert,
    settings: DiffusionSettings,
    token_info: torch.Tensor | None,
    split: EncodedSplit,
    samples: Sequence[str] | None = None,
    references: Sequence[str] | None = None,
    *,
    elbo_samples: int = 1,
    **elbo_options: Any,
) -> dict[str, float]:
    """Table 2's metrics: the 128-step bound over real tokens, and BLEU / Self-BLEU both ways.

    ``samples``: texts generated with :data:`PAPER_STEPS` steps (BLEU is skipped without them);
    ``references``: the normalised test sentences. Keys are prefixed ``paper_``;
    ``paper_empty_samples`` counts the empty samples: 0 in the means (as in the authors' code),
    left out of the pooled scores.
    ``elbo_samples`` and ``elbo_options`` (``batch_size``, ``seed``, ``max_sentences``,
    ``progress``, ``backend``) go to :func:`elbo_perplexity` of the 128-step model.
    """
    net, s128 = discretised(model, settings, PAPER_STEPS)
    e = elbo_perplexity(net, s128, token_info, split, samples=elbo_samples, **elbo_options)
    out = {
        "paper_T": e["T"], "paper_nelbo_per_sentence": e["nelbo_real_per_sentence"],
        "paper_nats_per_wordpiece": e["nats_per_wordpiece"], "paper_ppl_per_wordpiece": e["ppl_per_wordpiece"],
    }
    if samples is not None:
        if references is None:
            raise ValueError("paper_metrics needs the references to score the samples")
        out.update({
            "paper_bleu4_mean": bleu4_mean(samples, references), "paper_bleu4_pooled": bleu4(samples, references),
            "paper_self_bleu4_mean": self_bleu_mean(samples), "paper_self_bleu4_pooled": self_bleu(samples),
            "paper_empty_samples": float(empty_samples(samples)),
        })
    return out


def _words(texts: Sequence[str]) -> list[list[str]]:
    return [t.lower().split() for t in texts]


def _authors_words(texts: Sequence[str]) -> list[list[str]]:
    """Word lists as the authors' ``compute_metric.py`` reads a sample file
    (``line.strip().split(' ')``): an empty sample is ``['']``, one word that matches nothing, so it
    scores 0 and still counts in the mean."""
    return [t.lower().split() or [""] for t in texts]


def empty_samples(samples: Sequence[str]) -> int:
    """How many samples are empty (``[SEP]`` or ``[PAD]`` right after ``[CLS]``)."""
    return sum(not t.split() for t in samples)


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


def _per_sample_corpus_bleu(pairs: list[tuple[list[list[str]], list[str]]]) -> float:
    from nltk.translate.bleu_score import corpus_bleu

    with warnings.catch_warnings():  # NLTK warns for every sample without a 4-gram match (score 0)
        warnings.simplefilter("ignore")
        return float(sum(corpus_bleu([refs], [hyp]) for refs, hyp in pairs) / len(pairs))


def bleu4_mean(samples: Sequence[str], references: Sequence[str]) -> float:
    """The authors' BLEU-4: the mean over samples of ``corpus_bleu`` of one sample against all
    ``references``, no smoothing. Every sample counts, as in the authors' code: an empty one
    scores 0 (``["", "the cat sat"]`` against ``["the cat sat"]`` gives 0.5). Without any
    non-empty sample (or reference) it raises ValueError, as the pooled :func:`bleu4` does."""
    hyps = _authors_words(samples)
    refs = [r for r in _words(references) if r]
    if empty_samples(samples) == len(hyps) or not refs:
        raise ValueError("BLEU needs at least one non-empty sample and one non-empty reference")
    return _per_sample_corpus_bleu([(refs, h) for h in hyps])


def self_bleu_mean(samples: Sequence[str]) -> float:
    """The authors' Self-BLEU-4: the mean over samples of ``corpus_bleu`` of one sample against
    all the other samples, no smoothing. Every sample counts, as in the authors' code: an empty
    one scores 0 (about 1e-231 against another empty one) and is among the others' references.
    It needs two samples, one of them non-empty (ValueError otherwise)."""
    hyps = _authors_words(samples)
    if len(hyps) < 2 or empty_samples(samples) == len(hyps):
        raise ValueError("Self-BLEU needs at least two samples, one of them non-empty")
    return _per_sample_corpus_bleu([(hyps[:i] + hyps[i + 1 :], h) for i, h in enumerate(hyps)])
