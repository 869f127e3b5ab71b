"""Text generation with a trained DiffusionBERT through :func:`dbert_kernels.generate`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from dbert_kernels import DEFAULT_STRATEGY, Sampling, Strategy, generate

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
    model: DiffusionBert | Any,
    settings: DiffusionSettings,
    tokenizer: Any,
    *,
    n: int = 4,
    steps: int = 64,
    seq_len: int | None = None,
    strategy: str | Strategy = DEFAULT_STRATEGY,
    sampling: Sampling | None = None,
    token_info: torch.Tensor | None = None,
    early_stop: bool = False,
    progress: bool = True,
    **options: Any,
) -> Any:
    """``[n, seq_len]`` ids generated from all ``[MASK]`` (position 0 fixed to ``[CLS]``).

    ``model``: a :class:`DiffusionBert` (put in eval mode for the call) or any
    :class:`dbert_kernels.Denoiser` wrapping one. ``sampling``: how tokens are drawn (its
    ``banned_ids`` are replaced by :func:`banned_ids`); the flat sampling keywords of
    :func:`dbert_kernels.generate` (``temperature``, ``top_k``, ``top_p``, ``seed``, ``backend``)
    build one instead.

    ``seq_len`` defaults to the training length ``settings.max_len``. ``token_info`` (the
    checkpoint's ``LoadedModel.token_info()``): with a spindle schedule and
    ``strategy="posterior"``, reveal with the per-token spindle schedule the model was trained
    with; ``[CLS]``, ``[SEP]``, ``[PAD]`` and the banned ids stay out of the spindle mean.
    ``early_stop``: a row whose ``[SEP]`` has nothing masked before it is filled with ``[PAD]``
    and needs no more calls. ``options``: further keyword arguments of
    :func:`dbert_kernels.generate` (the strategy's options such as ``threshold`` or ``reveal``,
    ``block_length``, ``cache``, ``return_stats``...).
    """
    seq_len = seq_len or settings.max_len
    sp = settings.special_ids
    fixed = torch.full((seq_len,), -1, dtype=torch.int64)
    fixed[0] = sp["cls"]
    schedule = settings.build_schedule()
    banned = banned_ids(tokenizer, settings)
    if sampling is None:
        options["banned_ids"] = banned  # with the other flat keywords, generate builds the Sampling
    else:
        sampling = replace(sampling, banned_ids=banned)
    if schedule.is_spindle and strategy == "posterior" and token_info is not None:
        options.update(token_info=token_info, special_ids=sorted({sp["cls"], sp["sep"], sp["pad"], *banned}))
    if early_stop:
        options.update(stop_ids=[sp["sep"]], pad_id=sp["pad"])
    was_training = getattr(model, "training", False)  # a wrapper around the network has no modes
    if was_training:
        model.eval()
    try:
        return generate(
            model, mask_id=sp["mask"], batch_size=n, seq_len=seq_len, steps=steps, schedule=schedule,
            strategy=strategy, sampling=sampling, fixed=fixed.to(model.device), progress=progress, **options,
        )
    finally:
        if was_training:
            model.train(True)


def decode(tokenizer: Any, ids: torch.Tensor, settings: DiffusionSettings) -> list[str]:
    """Texts of generated ids: each row is cut at its first ``[SEP]`` or ``[PAD]`` after ``[CLS]``."""
    stop = {settings.special_ids["sep"], settings.special_ids["pad"]}
    texts = []
    for row in ids.tolist():
        body = row[1:] if row and row[0] == settings.special_ids["cls"] else row
        end = next((i for i, tok in enumerate(body) if tok in stop), len(body))
        texts.append(tokenizer.decode(body[:end], skip_special_tokens=True).strip())
    return texts
