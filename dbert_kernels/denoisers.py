"""Denoisers: what the sampler asks for logits, and adapters that make anything one.

A denoiser maps ids ``[B, L]`` (with ``[MASK]`` at unknown positions) to logits over the
vocabulary. The sampler calls it as ``denoiser(ids, t=t, rows=rows)``:

* ``t``: ``[B]`` float times of the current step (time-agnostic denoisers ignore it);
* ``rows``: ``[B, L]`` bool, the positions whose logits are needed. A denoiser returns
  ``[rows.sum(), V]`` logits for them in row-major order; this lets BERT-like models run the LM
  head (the largest matmul of a step) only where it is needed.

:func:`as_denoiser` wraps a plain callable ``ids -> logits [B, L, V]`` or a Hugging Face masked
LM (``BertForMaskedLM`` or any ``AutoModelForMaskedLM``) into that interface.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from .cache import BlockCache, bert_layers, cached_encoder_pass, rows_in_span

__all__ = ["Denoiser", "CallableDenoiser", "HFMaskedLMDenoiser", "BigramDenoiser", "as_denoiser"]


class Denoiser:
    """Base class: subclasses implement :meth:`logits` and set ``vocab_size``.

    Optional: ``device`` (where the sampler puts the ids when not told), and ``supports_cache``
    with :meth:`cached_logits` for the block cache of :mod:`dbert_kernels.cache`.
    """

    vocab_size: int
    device: torch.device | None = None
    supports_cache: bool = False

    def logits(self, ids: torch.Tensor, t: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        """Logits ``[rows.sum(), V]`` for the positions where ``rows`` is True."""
        raise NotImplementedError

    def __call__(
        self, ids: torch.Tensor, *, t: torch.Tensor | None = None, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        if rows is None:
            rows = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
            return self.logits(ids, t, rows).reshape(*ids.shape, -1)
        if rows.shape != ids.shape or rows.dtype != torch.bool:
            raise ValueError(f"rows must be a bool tensor shaped like ids {tuple(ids.shape)}")
        return self.logits(ids, t, rows)

    def cached_logits(
        self, ids: torch.Tensor, t: torch.Tensor | None, rows: torch.Tensor, cache: BlockCache, batch_rows: torch.Tensor
    ) -> torch.Tensor:
        """Like :meth:`logits`, through ``cache`` (``batch_rows``: the rows' indices in the batch)."""
        raise ValueError(f"{type(self).__name__} cannot take a block cache: pass cache=None")


def _check_full_logits(out: Any, ids: torch.Tensor, who: str) -> torch.Tensor:
    if hasattr(out, "logits"):
        out = out.logits
    if not isinstance(out, torch.Tensor) or out.dim() != 3 or tuple(out.shape[:2]) != tuple(ids.shape):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{who} must return logits [B, L, V] for ids {tuple(ids.shape)}, got {shape}")
    return out


class CallableDenoiser(Denoiser):
    """Wrap ``fn(ids) -> [B, L, V]``; ``fn`` gets the time step only when it declares it: as a
    parameter named ``t`` (``fn(ids, t=...)``), or as a second positional parameter without a
    default (``fn(ids, t)``). An optional second parameter of another name (``fn(ids, scale=1.0)``)
    is left alone."""

    def __init__(self, fn: Callable[..., Any], vocab_size: int | None = None) -> None:
        self.fn = fn
        self.t_by_name = self.t_by_position = False
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            params = []
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.t_by_name = any(p.name == "t" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params[1:])
        self.t_by_position = not self.t_by_name and len(positional) >= 2 and positional[1].default is inspect.Parameter.empty
        self.takes_t = self.t_by_name or self.t_by_position
        self.vocab_size = vocab_size or 0

    def logits(self, ids: torch.Tensor, t: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        if self.t_by_name:
            out = self.fn(ids, t=t)
        elif self.t_by_position:
            out = self.fn(ids, t)
        else:
            out = self.fn(ids)
        out = _check_full_logits(out, ids, "the denoiser callable")
        self.vocab_size = out.shape[-1]
        return out[rows]


class HFMaskedLMDenoiser(Denoiser):
    """A Hugging Face masked LM; for BERT-like models the LM head runs only on needed rows.

    Args:
        model: e.g. ``BertForMaskedLM``; put it in eval mode and on its device first.
        pad_id: positions equal to ``pad_id`` get attention mask 0 (None: attend everywhere).
    """

    def __init__(self, model: Any, pad_id: int | None = None) -> None:
        self.model = model
        self.pad_id = pad_id
        self.vocab_size = int(model.config.vocab_size)
        base_name = getattr(model, "base_model_prefix", "")
        self.encoder = getattr(model, base_name, None) if base_name else None
        self.head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
        first = next(iter(model.parameters()), None)
        self.device = first.device if first is not None else None
        try:
            self.supports_cache = self.encoder is not None and self.head is not None and bool(bert_layers(self.encoder))
        except ValueError:
            self.supports_cache = False

    def _full_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        attn = None if self.pad_id is None else (ids != self.pad_id).long()
        return self.encoder(input_ids=ids, attention_mask=attn).last_hidden_state

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, t: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None and self.head is not None:
            return self.head(self._full_hidden(ids)[rows])
        attn = None if self.pad_id is None else (ids != self.pad_id).long()
        out = self.model(input_ids=ids, attention_mask=attn)
        return _check_full_logits(out, ids, "the model")[rows]

    @torch.no_grad()
    def cached_logits(
        self, ids: torch.Tensor, t: torch.Tensor | None, rows: torch.Tensor, cache: BlockCache, batch_rows: torch.Tensor
    ) -> torch.Tensor:
        key_mask = None if self.pad_id is None else ids != self.pad_id
        hidden, first = cached_encoder_pass(self.encoder, ids, cache, batch_rows, self._full_hidden, key_mask=key_mask)
        return self.head(hidden[rows_in_span(rows, first, hidden.shape[1])])


class BigramDenoiser(Denoiser):
    """A model-free denoiser for tests and demos: fixed bigram logits.

    The logits at a position are ``table[left]`` where ``left`` is the token to its left when
    that token is known (not ``mask_id``), else ``unigram``. Deterministic from ``seed``.
    """

    def __init__(self, vocab_size: int, mask_id: int, seed: int = 0, scale: float = 3.0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab_size
        self.mask_id = mask_id
        self.table = torch.randn(vocab_size, vocab_size, generator=gen) * scale
        self.unigram = torch.randn(vocab_size, generator=gen) * scale
        self.calls = 0
        self.rows_asked = 0

    def logits(self, ids: torch.Tensor, t: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows_asked += int(rows.sum())
        left = torch.full_like(ids, self.mask_id)
        left[:, 1:] = ids[:, :-1]
        left = left[rows].cpu()
        table = self.table
        out = torch.where((left == self.mask_id)[:, None], self.unigram[None, :], table[left.clamp(0, self.vocab_size - 1)])
        return out.to(ids.device)


def as_denoiser(obj: Any, *, pad_id: int | None = None) -> Denoiser:
    """Wrap ``obj`` (a Denoiser, a Hugging Face masked LM, or a callable) as a :class:`Denoiser`.

    A :class:`Denoiser` (such as the project's ``DiffusionBert``) is returned as it is.
    """
    if isinstance(obj, Denoiser):
        return obj
    if hasattr(obj, "config") and hasattr(obj.config, "vocab_size") and isinstance(obj, torch.nn.Module):
        return HFMaskedLMDenoiser(obj, pad_id=pad_id)
    if callable(obj):
        return CallableDenoiser(obj)
    raise TypeError(
        f"cannot use a {type(obj).__name__} as a denoiser: pass a callable ids -> logits [B, L, V], "
        "a Hugging Face masked LM, or a dbert_kernels.Denoiser"
    )
