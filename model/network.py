"""The DiffusionBERT network: a Hugging Face masked LM plus one of three time-step designs.

* ``tad`` (time-agnostic decoding, the paper's best and the default): the masked LM as is.
* ``lte`` (layer-wise time embedding): in every layer, ``MLP(sinusoidal(t))`` is added to the
  output of self-attention, before the feed-forward block (a forward hook on each layer's
  ``attention`` module, so any BERT-like encoder layout works).
* ``pte`` (prefix time embedding): a time vector ``MLP(sinusoidal(t))`` is inserted as an extra
  input embedding right after ``[CLS]``; its output row is dropped. It is a separate input
  vector, not a vocabulary row: the word embeddings and the output vocabulary are untouched.

The time MLPs are ``hidden -> 2 hidden -> ReLU -> hidden``. Their initialisation (``time_init``):

* ``"normal"`` (default; the authors' code, whose new time layers get the backbone's
  ``normal(0, initializer_range)`` weights and zero biases): time enters from the first step.
* ``"zero"``: the last layer starts at zero, so a pretrained initialisation starts out exactly as
  the time-agnostic model (and LTE/PTE only drift from TAD as that layer learns).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dbert_kernels import BlockCache, Denoiser, bert_layers, cached_encoder_pass, rows_in_span

from .settings import TIME_DESIGNS, TIME_INITS

__all__ = ["DiffusionBert", "TimeMLP", "sinusoidal_embedding"]


def sinusoidal_embedding(t: torch.Tensor, T: float, dim: int) -> torch.Tensor:
    """Transformer sinusoidal embedding ``[B, dim]`` of times ``t`` ``[B]`` in ``[0, T]``.

    The time is rescaled to ``[0, 1000]`` first, so the embedding does not depend on the scale T.
    """
    half = dim // 2
    scaled = t.to(torch.float32) * (1000.0 / float(T))
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half, 1))
    args = scaled[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


class TimeMLP(nn.Module):
    """``sinusoidal(t) -> Linear(h, 2h) -> ReLU -> Linear(2h, h)``.

    ``init``: ``"normal"`` (both layers ``normal(0, std)``, zero biases) or ``"zero"`` (the first
    layer so, the last layer all zeros: the output is 0 until it learns).
    """

    def __init__(self, hidden: int, T: float, init: str = "normal", std: float = 0.02) -> None:
        super().__init__()
        if init not in TIME_INITS:
            raise ValueError(f"time_init must be one of {TIME_INITS}, got {init!r}")
        self.T = float(T)
        self.net = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, hidden))
        for layer in (self.net[0], self.net[2]):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)
        if init == "zero":
            nn.init.zeros_(self.net[2].weight)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t``: ``[B]`` times in ``[0, T]`` -> ``[B, hidden]``."""
        emb = sinusoidal_embedding(t, self.T, self.net[0].in_features)
        return self.net(emb.to(self.net[0].weight.dtype))


def _encoder_and_head_names(mlm: nn.Module) -> tuple[str, str | None]:
    """Attribute names of the encoder (base model) and of the MLM head inside ``mlm``."""
    prefix = getattr(mlm, "base_model_prefix", "")
    if not prefix or not isinstance(getattr(mlm, prefix, None), nn.Module):
        raise ValueError(
            f"{type(mlm).__name__} has no base model attribute ({prefix!r}); DiffusionBERT needs a "
            "BERT-like masked LM (AutoModelForMaskedLM)"
        )
    head = next((n for n in ("cls", "lm_head") if isinstance(getattr(mlm, n, None), nn.Module)), None)
    return prefix, head


def _attention_layers(encoder: nn.Module) -> list[nn.Module]:
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if layers is None or not all(hasattr(layer, "attention") for layer in layers):
        raise ValueError(
            f"layer-wise time embedding (lte) needs a BERT-style encoder (encoder.layer[i].attention); "
            f"{type(encoder).__name__} does not have one: use time_design='tad' or 'pte'"
        )
    return [layer.attention for layer in layers]


class DiffusionBert(nn.Module, Denoiser):
    """A masked LM used as the x0-predictor of an absorbing-state diffusion.

    It is a :class:`dbert_kernels.Denoiser`: ``dbert_kernels.generate(model, ...)`` drives it
    directly (put it in eval mode first), with the LM head run only on the needed rows and, for
    ``tad`` and ``lte``, the block cache of :mod:`dbert_kernels.cache`.

    Args:
        mlm: a Hugging Face masked LM (``BertForMaskedLM`` or an ``AutoModelForMaskedLM``).
        time_design: ``"tad"``, ``"lte"`` or ``"pte"``.
        T: the time scale of ``t`` (the schedule's T).
        time_init: ``"normal"`` or ``"zero"`` initialisation of the time MLPs (see the module
            docstring; ignored by ``tad``).
    """

    def __init__(self, mlm: nn.Module, time_design: str = "tad", T: float = 1000.0, time_init: str = "normal") -> None:
        super().__init__()
        if time_design not in TIME_DESIGNS:
            raise ValueError(f"time_design must be one of {TIME_DESIGNS}, got {time_design!r}")
        self.mlm = mlm
        self.time_design = time_design
        self.T = float(T)
        self.vocab_size = int(mlm.config.vocab_size)
        hidden = int(mlm.config.hidden_size)
        self._encoder_name, self._head_name = _encoder_and_head_names(mlm)  # names: no duplicate registration
        self._time_emb: torch.Tensor | None = None
        std = float(getattr(mlm.config, "initializer_range", 0.02))
        if time_init not in TIME_INITS:
            raise ValueError(f"time_init must be one of {TIME_INITS}, got {time_init!r}")
        if time_design == "lte":
            attention = _attention_layers(self._encoder)
            self.time_mlps = nn.ModuleList(TimeMLP(hidden, T, time_init, std) for _ in attention)
            for index, module in enumerate(attention):
                module.register_forward_hook(self._make_lte_hook(index))
        elif time_design == "pte":
            self.time_mlp = TimeMLP(hidden, T, time_init, std)
            # With a zero-initialised MLP the time vector would be all zeros at the start: a learned
            # offset makes the time token distinguishable from padding from the first step.
            self.time_token = nn.Parameter(torch.zeros(hidden))
            nn.init.normal_(self.time_token, std=std)

    @property
    def _encoder(self) -> nn.Module:
        return getattr(self.mlm, self._encoder_name)

    @property
    def _head(self) -> nn.Module | None:
        return getattr(self.mlm, self._head_name) if self._head_name else None

    @property
    def config(self) -> Any:
        """The backbone's Hugging Face config."""
        return self.mlm.config

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        """Where the parameters live (the sampler's default device for the ids)."""
        return next(self.parameters()).device

    @property
    def supports_cache(self) -> bool:  # type: ignore[override]
        """True when :meth:`cached_logits` works: a BERT-style encoder, a head, not ``pte``."""
        if self.time_design == "pte" or self._head is None:
            return False
        try:
            return bool(bert_layers(self._encoder))
        except ValueError:
            return False

    @torch.no_grad()
    def logits(self, ids: torch.Tensor, t: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        """The :class:`~dbert_kernels.Denoiser` call: logits ``[rows.sum(), V]``."""
        return self(ids, t=t, rows=rows)

    @torch.no_grad()
    def cached_logits(
        self, ids: torch.Tensor, t: torch.Tensor | None, rows: torch.Tensor, cache: BlockCache, batch_rows: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`logits` through a block cache (``tad`` / ``lte``; see :mod:`dbert_kernels.cache`)."""
        if not self.supports_cache:
            raise ValueError(f"time_design={self.time_design!r} cannot take a block cache: pass cache=None")
        t = self._check_time(ids, t)
        add = [mlp(t) for mlp in self.time_mlps] if self.time_design == "lte" else None
        hidden, first = cached_encoder_pass(
            self._encoder, ids, cache, batch_rows, lambda x: self.hidden_states(x, t), layer_add=add
        )
        return self._head(hidden[rows_in_span(rows, first, hidden.shape[1])])

    @property
    def needs_time(self) -> bool:
        return self.time_design != "tad"

    def _make_lte_hook(self, index: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if self._time_emb is None:
                return output
            add = self._time_emb[index][:, None, :]
            if isinstance(output, tuple):
                return (output[0] + add.to(output[0].dtype), *output[1:])
            return output + add.to(output.dtype)

        return hook

    def _check_time(self, ids: torch.Tensor, t: torch.Tensor | float | None) -> torch.Tensor | None:
        if not self.needs_time:
            return None
        if t is None:
            raise ValueError(f"time_design={self.time_design!r} needs the time t of each row")
        t = torch.as_tensor(t, dtype=torch.float32, device=ids.device)
        if t.dim() == 0:
            t = t.expand(ids.shape[0])
        if t.shape != (ids.shape[0],):
            raise ValueError(f"t must be a scalar or [B] = [{ids.shape[0]}], got {tuple(t.shape)}")
        return t

    def hidden_states(
        self, ids: torch.Tensor, t: torch.Tensor | float | None = None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final hidden states ``[B, L, H]`` for ids ``[B, L]`` at times ``t`` ``[B]``."""
        t = self._check_time(ids, t)
        if self.time_design == "pte":
            embed = self.mlm.get_input_embeddings()(ids)
            prefix = (self.time_mlp(t) + self.time_token).to(embed.dtype)[:, None, :]
            inputs = torch.cat([embed[:, :1], prefix, embed[:, 1:]], dim=1)
            if attention_mask is not None:
                attention_mask = torch.cat([attention_mask[:, :1], attention_mask[:, :1], attention_mask[:, 1:]], 1)
            out = self._encoder(inputs_embeds=inputs, attention_mask=attention_mask).last_hidden_state
            return torch.cat([out[:, :1], out[:, 2:]], dim=1)
        if self.time_design == "lte":
            self._time_emb = [mlp(t) for mlp in self.time_mlps]
        try:
            return self._encoder(input_ids=ids, attention_mask=attention_mask).last_hidden_state
        finally:
            self._time_emb = None

    def forward(
        self,
        ids: torch.Tensor,
        t: torch.Tensor | float | None = None,
        rows: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits: ``[B, L, V]``, or ``[rows.sum(), V]`` for the positions where ``rows`` (bool) is True.

        The LM head (the largest matmul) runs only on the selected rows.
        """
        if self._head is None:  # pragma: no cover - exotic masked LMs without a separable head
            if self.time_design != "tad":
                raise ValueError(f"{type(self.mlm).__name__}: only time_design='tad' is supported")
            logits = self.mlm(input_ids=ids, attention_mask=attention_mask).logits
            return logits if rows is None else logits[rows]
        hidden = self.hidden_states(ids, t, attention_mask)
        return self._head(hidden if rows is None else hidden[rows])
