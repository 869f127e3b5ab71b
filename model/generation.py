"""Text generation with a trained DiffusionBERT through :func:`dbert_kernels.generate`."""

from __future__ import annotations

from typing import Any

import torch

from dbert_kernels import generate

from .build import DiffusionBertDenoiser
from .network import DiffusionBert
from .settings import DiffusionSettings

__all__ = ["banned_ids", "sample_ids", "decode"]


def banned_ids(tokenizer: Any, settings: DiffusionSettings) -> list[int]:
    """Ids never generated: ``[CLS]``, ``[MASK]``, ``[UNK]`` and ``[unused*]`` rows.

    ``[SEP]`` and ``[PAD]`` stay allowed: the model writes them to end a sentence.
    """
    sp = settings.special_ids
    out = {sp["cls"], sp["mask"], sp["unk"]}
    out.update(i for tok, i in tokenizer.get_vocab().items() if tok.startswith("[unused"))
    return sorted(out)


def sample_ids(
    model: DiffusionBert,
    settings: DiffusionSettings,
    tokenizer: Any,
    *,
    n: int = 4,
    steps: int = 64,
    seq_len: int | None = None,
    strategy: str = "posterior",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    progress: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """``[n, seq_len]`` ids generated from all ``[MASK]`` (position 0 fixed to ``[CLS]``).

    ``seq_len`` defaults to the training length ``settings.max_len``.
    """
    seq_len = seq_len or settings.max_len
    fixed = torch.full((seq_len,), -1, dtype=torch.int64)
    fixed[0] = settings.special_ids["cls"]
    was_training = model.training
    model.eval()
    try:
        return generate(
            DiffusionBertDenoiser(model), mask_id=settings.special_ids["mask"], batch_size=n, seq_len=seq_len,
            steps=steps, schedule=settings.build_schedule(), strategy=strategy, temperature=temperature,
            top_k=top_k, top_p=top_p, banned_ids=banned_ids(tokenizer, settings), fixed=fixed, seed=seed,
            progress=progress, backend=backend,
        )
    finally:
        model.train(was_training)


def decode(tokenizer: Any, ids: torch.Tensor, settings: DiffusionSettings) -> list[str]:
    """Texts of generated ids: each row is cut at its first ``[SEP]`` or ``[PAD]`` after ``[CLS]``."""
    stop = {settings.special_ids["sep"], settings.special_ids["pad"]}
    texts = []
    for row in ids.tolist():
        body = row[1:] if row and row[0] == settings.special_ids["cls"] else row
        end = next((i for i, tok in enumerate(body) if tok in stop), len(body))
        texts.append(tokenizer.decode(body[:end], skip_special_tokens=True).strip())
    return texts
