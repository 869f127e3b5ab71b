"""A block key/value cache for BERT-family encoders (Fast-dLLM's prefix and dual cache).

Semi-autoregressive decoding works on one block of positions at a time. A bidirectional encoder
still lets every position attend to every other, so a call normally recomputes the whole
sequence. With a :class:`BlockCache` the sampler instead

* **refreshes** at the first call of a block (and every ``refresh_every`` calls): an ordinary
  forward pass over the whole sequence, during which every layer's keys and values are recorded
  (forward hooks on the ``key`` / ``value`` projections: the pass itself is unchanged, so its
  logits equal the uncached ones exactly);
* otherwise runs the layers on the block only (``"dual"``: keys/values of the positions before
  and after the block come from the cache) or on the block and everything after it
  (``"prefix"``: only the positions before the block are cached). The queries are the block's;
  the keys/values of the positions that are run are fresh.

The cached keys/values are those of the last refresh, so the outputs differ from an uncached
pass wherever the context changed since then: an approximation for a bidirectional model. When
a block covers the whole sequence nothing is cached and every call is an ordinary pass.

Encoders supported: a Hugging Face ``BertModel``-like base model (``embeddings`` taking
``position_ids``; ``encoder.layer[i]`` with ``attention.self.{query,key,value}``,
``attention.output``, ``intermediate`` and ``output``), which covers BERT, RoBERTa, MiniLM and the
project's DiffusionBert on them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.nn import functional as F

__all__ = ["CACHE_MODES", "BlockCache", "bert_layers", "cached_encoder_pass", "rows_in_span"]

CACHE_MODES = ("prefix", "dual")


class BlockCache:
    """Per-layer keys/values of one generation's batch, and which block is being decoded.

    Args:
        mode: ``"prefix"`` or ``"dual"`` (see the module docstring).
        mask_id: the ``[MASK]`` id (a refresh runs every row that still has one).
        batch_size: rows of the generation's batch.
        refresh_every: recompute the cache every this many calls (None: once per block).
    """

    def __init__(self, mode: str, *, mask_id: int, batch_size: int, refresh_every: int | None = None) -> None:
        if mode not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES} or None, got {mode!r}")
        self.mode = mode
        self.mask_id = mask_id
        self.batch_size = batch_size
        self.refresh_every = refresh_every
        self.keys: list[torch.Tensor] | None = None
        self.values: list[torch.Tensor] | None = None
        self.start = 0
        self.end = 0
        self.calls_since_refresh = 0

    def open_block(self, start: int, end: int) -> None:
        """Start decoding positions ``[start, end)``; the next call refreshes."""
        self.start, self.end = start, end
        self.keys = self.values = None

    def is_whole(self, seq_len: int) -> bool:
        """True when the block is the whole sequence (nothing to cache)."""
        return self.start == 0 and self.end >= seq_len

    def needs_refresh(self) -> bool:
        """True when the next call must be a full pass that records keys/values."""
        if self.keys is None:
            return True
        return self.refresh_every is not None and self.calls_since_refresh >= self.refresh_every

    def span(self, seq_len: int) -> tuple[int, int]:
        """Positions ``[a, b)`` the network runs on at the next call."""
        if self.is_whole(seq_len) or self.needs_refresh():
            return 0, seq_len
        return (self.start, seq_len) if self.mode == "prefix" else (self.start, self.end)


def bert_layers(encoder: Any) -> list[Any]:
    """The layers of a BERT-like base model; ``ValueError`` when it does not have that layout."""
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    ok = layers is not None and hasattr(encoder, "embeddings") and all(
        all(hasattr(getattr(layer.attention, "self", None), n) for n in ("query", "key", "value"))
        and all(hasattr(layer, n) for n in ("intermediate", "output")) and hasattr(layer.attention, "output")
        for layer in layers
    )
    if not ok:
        raise ValueError(
            f"a block cache needs a BERT-style encoder (embeddings, encoder.layer[i].attention.self.key ...); "
            f"{type(encoder).__name__} does not have one: pass cache=None"
        )
    return list(layers)


@contextlib.contextmanager
def _record(layers: list[Any], keys: list[torch.Tensor | None], values: list[torch.Tensor | None]) -> Iterator[None]:
    handles = []
    for index, layer in enumerate(layers):
        sa = layer.attention.self

        def put(store: list[torch.Tensor | None], i: int) -> Callable[..., None]:
            def hook(module: Any, args: Any, output: torch.Tensor) -> None:
                store[i] = output

            return hook

        handles.append(sa.key.register_forward_hook(put(keys, index)))
        handles.append(sa.value.register_forward_hook(put(values, index)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def cached_encoder_pass(
    encoder: Any,
    ids: torch.Tensor,
    cache: BlockCache,
    batch_rows: torch.Tensor,
    full_pass: Callable[[torch.Tensor], torch.Tensor],
    *,
    key_mask: torch.Tensor | None = None,
    layer_add: list[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """Final hidden states of the positions the cache says to run.

    Args:
        encoder: the BERT-like base model whose layers :func:`bert_layers` returns.
        ids: ``[b, L]`` ids of the rows to run (full sequences).
        cache: the generation's cache (updated on a refresh).
        batch_rows: ``[b]`` the rows' indices in the generation's batch.
        full_pass: ``ids -> [b, L, H]`` the network's ordinary pass (used for refreshes).
        key_mask: ``[b, L]`` bool, False for keys never attended to (padding); None: all.
        layer_add: per layer ``[b, H]`` added to each attention output (a time embedding).

    Returns:
        ``(hidden [b, L_run, H], first)``: the hidden states of positions ``[first, first + L_run)``.
    """
    seq_len = ids.shape[1]
    layers = bert_layers(encoder)
    if cache.is_whole(seq_len):
        return full_pass(ids), 0
    if cache.needs_refresh():
        keys: list[torch.Tensor | None] = [None] * len(layers)
        values: list[torch.Tensor | None] = [None] * len(layers)
        with _record(layers, keys, values):
            hidden = full_pass(ids)
        if cache.keys is None:
            cache.keys = [k.new_zeros((cache.batch_size, *k.shape[1:])) for k in keys]
            cache.values = [v.new_zeros((cache.batch_size, *v.shape[1:])) for v in values]
        for store, got in ((cache.keys, keys), (cache.values, values)):
            for i, value in enumerate(got):
                store[i][batch_rows] = value
        cache.calls_since_refresh = 1
        return hidden, 0
    cache.calls_since_refresh += 1
    first, last = cache.span(seq_len)
    rows = ids.shape[0]
    positions = torch.arange(first, last, device=ids.device)[None, :].expand(rows, -1)
    hidden = encoder.embeddings(input_ids=ids[:, first:last], position_ids=positions)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    for index, layer in enumerate(layers):
        sa = layer.attention.self
        heads = sa.num_attention_heads
        size = sa.attention_head_size
        key_c, value_c = cache.keys[index][batch_rows], cache.values[index][batch_rows]
        key_n, value_n = sa.key(hidden), sa.value(hidden)
        key = torch.cat([key_c[:, :first], key_n, key_c[:, last:]], dim=1)
        value = torch.cat([value_c[:, :first], value_n, value_c[:, last:]], dim=1)
        query = sa.query(hidden)
        query, key, value = (x.view(rows, x.shape[1], heads, size).transpose(1, 2) for x in (query, key, value))
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask,
            scale=getattr(sa, "scaling", size**-0.5),
        )
        context = context.transpose(1, 2).reshape(rows, last - first, heads * size)
        attended = layer.attention.output(context, hidden)
        if layer_add is not None:
            attended = attended + layer_add[index][:, None, :].to(attended.dtype)
        hidden = layer.output(layer.intermediate(attended), attended)
    return hidden, first


def rows_in_span(rows: torch.Tensor, first: int, length: int) -> torch.Tensor:
    """``rows`` ``[b, L]`` cut to the run positions ``[first, first + length)`` (all asked rows must be there)."""
    inside = rows[:, first:first + length]
    if int(inside.sum()) != int(rows.sum()):
        raise ValueError("a cached call can only return logits of positions in the current block")
    return inside
