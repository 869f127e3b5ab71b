"""Sample quality that does not depend on the sampler's own model: an autoregressive judge.

The judge is a GPT-2 checkpoint (``dbert train --arch gpt2``) trained separately from the
models it scores (another seed and budget, or a larger size). For a list of texts it reports:

* ``gen_ppl``: generative perplexity, ``exp(total NLL / total tokens)`` under the judge, each
  text scored as ``[CLS] text [SEP]`` (the judge predicts its WordPieces and the closing
  ``[SEP]``, so an unfinished sentence costs too); texts longer than the judge's ``max_len`` are
  cut to it (counted in ``truncated``); empty texts are not scored (counted in ``empty``);
* ``distinct_1/2/3``: distinct word n-grams over all n-grams of all texts (lower-cased
  whitespace words, as BLEU reads them); higher = more diverse;
* ``repetition``: the mean over texts of the share of word bigrams that repeat an earlier bigram
  of the same text (``1 - distinct/total`` bigrams within the text); 0 = no repeats.

Python: ``dbert_model.judge.score_texts(judge_dir, texts) -> dict``; load once and score many
with ``Judge.load(judge_dir).score(texts)``. CLI: ``dbert eval --judge DIR``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .ar import LoadedAR, ar_loss, load_ar
from .evaluate import _words

__all__ = ["Judge", "score_texts", "distinct_n", "repetition_rate", "text_metrics"]


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word ``n``-grams / all word ``n``-grams over ``texts`` (0.0 when there are none)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [g for words in _words(texts) for g in _ngrams(words, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(texts: Sequence[str], n: int = 2) -> float:
    """Mean over texts (with at least one ``n``-gram) of ``1 - distinct / total`` word ``n``-grams."""
    rates = []
    for words in _words(texts):
        grams = _ngrams(words, n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


def text_metrics(texts: Sequence[str]) -> dict[str, float]:
    """``distinct_1``, ``distinct_2``, ``distinct_3`` and ``repetition`` of ``texts`` (no model)."""
    return {**{f"distinct_{n}": distinct_n(texts, n) for n in (1, 2, 3)}, "repetition": repetition_rate(texts)}


@dataclass
class Judge:
    """A loaded judge; :meth:`score` rates texts. Build with :meth:`load`."""

    loaded: LoadedAR

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str | None = None) -> Judge:
        """Load the GPT-2 checkpoint at ``path`` as a judge."""
        if not Path(path).exists():
            raise FileNotFoundError(f"judge not found: {path} (train one with `dbert train --arch gpt2 --out {path}`)")
        return cls(load_ar(path, device=device))

    @property
    def path(self) -> Path:
        return self.loaded.path

    @torch.no_grad()
    def nll(self, texts: Sequence[str], batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Per-text summed NLL ``[N]`` float64 and predicted tokens ``[N]`` int64 (0 for empty
        texts), and how many texts were cut to the judge's ``max_len``."""
        tok, settings, model = self.loaded.tokenizer, self.loaded.settings, self.loaded.model
        max_len, pad = settings.max_len, settings.special_ids["pad"]
        nll = torch.zeros(len(texts), dtype=torch.float64)
        tokens = torch.zeros(len(texts), dtype=torch.int64)
        keep = [i for i, t in enumerate(texts) if t.strip()]
        if not keep:
            return nll, tokens, 0
        full = tok([texts[i] for i in keep])["input_ids"]
        truncated = sum(len(ids) > max_len for ids in full)
        enc = tok([texts[i] for i in keep], max_length=max_len, truncation=True, padding="max_length")
        ids = torch.tensor(enc["input_ids"], dtype=torch.int64)
        device = next(model.parameters()).device
        for start in range(0, len(keep), batch_size):
            out = ar_loss(model, ids[start : start + batch_size].to(device), pad)
            index = torch.tensor(keep[start : start + batch_size])
            nll[index] = out.nll.double().cpu()
            tokens[index] = out.tokens.cpu()
        return nll, tokens, truncated

    def score(self, texts: Sequence[str], batch_size: int = 32) -> dict[str, Any]:
        """Judge metrics of ``texts`` (see the module docstring): ``texts``, ``scored``, ``empty``,
        ``truncated``, ``tokens``, ``nll_per_token``, ``gen_ppl``, ``distinct_1/2/3``, ``repetition``."""
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to judge")
        nll, tokens, truncated = self.nll(texts, batch_size)
        total = int(tokens.sum())
        per_token = float(nll.sum()) / total if total else float("nan")
        return {
            "judge": str(self.path), "texts": len(texts), "scored": int((tokens > 0).sum()),
            "empty": int((tokens == 0).sum()), "truncated": truncated, "tokens": total,
            "nll_per_token": per_token, "gen_ppl": float(torch.tensor(per_token).clamp(max=700).exp()),
            **text_metrics(texts),
        }


def score_texts(judge: str | Path | Judge, texts: Sequence[str], *, batch_size: int = 32,
                device: torch.device | str | None = None) -> dict[str, Any]:
    """Judge metrics of ``texts`` (see :meth:`Judge.score`); ``judge`` is a GPT-2 checkpoint
    directory or a loaded :class:`Judge`."""
    if not isinstance(judge, Judge):
        judge = Judge.load(judge, device=device)
    return judge.score(texts, batch_size=batch_size)
