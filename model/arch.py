"""Architectures: what the trainer and the ``dbert`` command need from a model family, and their registry.

An :class:`Architecture` is a handful of short hooks (in the spirit of a Lightning module's
training step / validation step / optimiser set-up):

* :meth:`~Architecture.build` a new network from a :class:`~dbert_model.settings.TrainConfig`
  (``cfg.init``) and the run's :class:`~dbert_model.settings.DiffusionSettings`;
* :meth:`~Architecture.loss`: the training loss of (one process's shard of) a batch;
* :meth:`~Architecture.validate`: validation metrics and their log line;
* :meth:`~Architecture.optimizer`: AdamW with weight decay on matrices (the default);
* :meth:`~Architecture.save` / :meth:`~Architecture.load` / :meth:`~Architecture.owns`:
  checkpoints (one loader for every family: :func:`load_model`);
* :meth:`~Architecture.sample` and :meth:`~Architecture.perplexity` (+ :meth:`~Architecture.report`):
  generation and evaluation for ``dbert generate`` / ``dbert eval``.

The trainer (:func:`dbert_model.train.train`) and the CLI only call these hooks; which family a
run trains is ``TrainConfig.arch`` (a registered name), which family a checkpoint holds is
:func:`architecture_of`. Two are built in: ``"diffusion"`` (DiffusionBERT,
:mod:`dbert_model.diffusion`) and ``"gpt2"`` (the autoregressive baseline, :mod:`dbert_model.ar`).
A third one is one new module with an :class:`Architecture` subclass plus one :func:`register`
call (see ``tests/test_model_arch.py`` for a toy one trained, saved, loaded and sampled through
``dbert``'s own code paths).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dbert_kernels import Sampling

__all__ = [
    "Architecture", "Loaded", "StepLoss", "register", "unregister", "get_architecture", "architecture_names",
    "architecture_of", "load_model", "DEFAULT_ARCHITECTURE",
]

#: How the CLI, training's sample lines and the architectures draw tokens unless told otherwise:
#: the paper's top-k 30 at temperature 1.
DEFAULT_SAMPLING = Sampling(top_k=30)

#: The architecture of a checkpoint that no other registered architecture claims (older checkpoints).
DEFAULT_ARCHITECTURE = "diffusion"


@dataclass
class StepLoss:
    """One shard's training loss: ``loss`` (differentiable, normalised by the whole batch so the
    shards' losses sum to the batch's), ``ce_sum`` (summed cross-entropy of the scored positions)
    and ``counted`` (their number); the trainer logs ``sum ce_sum / sum counted`` as ``ce_masked``."""

    loss: torch.Tensor
    ce_sum: float
    counted: float


@dataclass
class Loaded:
    """A loaded checkpoint: network (eval mode), settings, tokenizer, training token counts, the
    directory the files were read from, and the name of its architecture."""

    model: Any
    settings: Any
    tokenizer: Any
    token_counts: torch.Tensor
    path: Path | None
    arch: str = DEFAULT_ARCHITECTURE


class Architecture:
    """The hooks of one model family (override what differs; the defaults are shared)."""

    #: registry name (``TrainConfig.arch``, ``dbert train --arch``)
    name: str = ""
    #: ``model_type`` values of the ``config.json`` its checkpoints hold (for :meth:`owns`)
    model_types: tuple[str, ...] = ()
    #: whether ``dbert eval --paper-metrics`` (the diffusion bound of Table 2) applies
    paper_metrics: bool = False

    # -- building and checkpoints -------------------------------------------------------------
    def build(self, cfg: Any, settings: Any) -> torch.nn.Module:
        """A new network (train mode, CPU) for ``cfg`` (``cfg.init``) and the filled ``settings``."""
        raise NotImplementedError

    def describe(self, settings: Any) -> str:
        """What the training log says about the model after ``(init, ``."""
        return self.name

    def owns(self, path: Path) -> bool:
        """True when the checkpoint files in ``path`` are of this architecture."""
        return _model_type(path) in self.model_types

    #: what :meth:`load` returns (a :class:`Loaded` or a subclass with the same fields)
    loaded: type = Loaded

    def network(self, path: Path) -> torch.nn.Module:
        """An empty network for the checkpoint in ``path`` (its weights are loaded by :meth:`load`)."""
        raise NotImplementedError

    def load(self, path: Path, *, device: Any = None, tokenizer: Any = None) -> Any:
        """The checkpoint in ``path`` (a resolved checkpoint directory): a :class:`Loaded`-like object."""
        from safetensors.torch import load_file, load_model

        from .checkpoint import STATS_FILE, WEIGHTS_FILE, check_vocabulary
        from .settings import DiffusionSettings
        from .tokenizer import load_tokenizer

        settings = DiffusionSettings.load(path)
        tok = load_tokenizer(path) if tokenizer is None else tokenizer
        check_vocabulary(settings, tok, where=f"checkpoint {path}")
        model = self.network(path)
        missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False)
        if missing or unexpected:
            raise ValueError(f"checkpoint {path} does not match its {self.name} network: missing {sorted(missing)[:4]}, "
                             f"unexpected {sorted(unexpected)[:4]}")
        counts = load_file(str(path / STATS_FILE))["counts"]
        return self.loaded(model.to(device).eval(), settings, tok, counts, path, self.name)

    def save(self, out: Path, model: Any, settings: Any, tokenizer: Any, counts: torch.Tensor, *, step: int,
             trainer_state: dict[str, Any] | None = None, optimizer_state: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint of ``step`` into the run directory ``out`` (atomically)."""
        from .checkpoint import save_checkpoint

        return save_checkpoint(out, model, settings, tokenizer, counts, step=step, trainer_state=trainer_state,
                               optimizer_state=optimizer_state)

    # -- training -----------------------------------------------------------------------------
    def optimizer(self, model: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
        """AdamW: ``cfg.weight_decay`` on matrices, none on biases and LayerNorms."""
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "LayerNorm" not in n]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "LayerNorm" in n]
        return torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
        )

    def loss(self, model: Any, ids: torch.Tensor, *, settings: Any, info: torch.Tensor, cfg: Any, step: int,
             shard: slice) -> StepLoss:
        """The loss of the rows ``shard`` of the global batch ``ids`` at ``step`` (normalised by the whole batch)."""
        raise NotImplementedError

    def validate(self, model: Any, settings: Any, info: torch.Tensor, split: Any, cfg: Any) -> tuple[dict[str, float], str]:
        """Validation metrics of ``split`` and the line the trainer logs (after ``valid @ step: ``)."""
        raise NotImplementedError

    # -- generation and evaluation ------------------------------------------------------------
    def sample(self, model: Any, settings: Any, tokenizer: Any, *, n: int, sampling: Sampling = DEFAULT_SAMPLING,
               seq_len: int | None = None, steps: int = 32, progress: bool = False,
               token_counts: torch.Tensor | None = None, **options: Any) -> tuple[torch.Tensor, Any]:
        """``[n, seq_len]`` ids starting with ``[CLS]`` (read by :func:`dbert_model.generation.decode`)
        and the sampler's statistics (None when it has none). ``sampling``: how tokens are drawn
        (temperature, top-k, top-p, seed; a family uses what applies to it); ``options``:
        family-specific decoding options (a family ignores the ones it has no use for)."""
        raise NotImplementedError

    def perplexity(self, loaded: Any, split: Any, *, batch_size: int, elbo_samples: int = 1, seed: int = 0,
                   progress: bool = False, backend: str = "auto") -> dict[str, float]:
        """Held-out perplexity of ``split`` (at least ``sentences``, ``skipped_truncated``, ``perplexity``)."""
        raise NotImplementedError

    def report(self, results: dict[str, Any], loaded: Any, *, elbo_samples: int = 1) -> list[str]:
        """The lines ``dbert eval`` prints for :meth:`perplexity`'s results."""
        return [f"  perplexity   {results['perplexity']:.2f} per word"]

    def sampling_note(self, steps: int) -> str:
        """How ``dbert eval`` describes its samples (``64 steps``, ``KV cache``)."""
        return f"{steps} steps"


def _model_type(path: Path) -> str | None:
    try:
        return json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None


# -- the registry: name -> an Architecture, or "module:Class" imported on first use ---------------
_REGISTRY: dict[str, Architecture | str] = {
    "diffusion": ".diffusion:DiffusionBertArchitecture",
    "gpt2": ".ar:GPT2Architecture",
}


def register(arch: Architecture | str, name: str | None = None) -> None:
    """Add an architecture (an instance, or ``"module:Class"`` imported on first use) under ``name``
    (default: ``arch.name``); it replaces one of the same name."""
    key = name or (arch.name if isinstance(arch, Architecture) else "")
    if not key:
        raise ValueError("an architecture needs a name")
    _REGISTRY[key] = arch


def unregister(name: str) -> None:
    """Remove a registered architecture (tests)."""
    _REGISTRY.pop(name, None)


def architecture_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_architecture(name: str) -> Architecture:
    """The registered architecture ``name`` (ValueError naming the registered ones otherwise)."""
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"arch must be one of {architecture_names()}, got {name!r}")
    if isinstance(entry, str):
        module, _, cls = entry.partition(":")
        entry = _REGISTRY[name] = getattr(importlib.import_module(module, __package__), cls)()
    return entry


def architecture_of(path: str | Path) -> Architecture:
    """The architecture of the checkpoint at ``path`` (a run directory or a checkpoint's files):
    the first registered one that :meth:`~Architecture.owns` it, else :data:`DEFAULT_ARCHITECTURE`."""
    from .checkpoint import resolve_checkpoint

    resolved = resolve_checkpoint(path)
    if resolved is not None:
        for name in architecture_names():
            if name != DEFAULT_ARCHITECTURE and get_architecture(name).owns(resolved):
                return get_architecture(name)
    return get_architecture(DEFAULT_ARCHITECTURE)


def load_model(path: str | Path, *, device: Any = None, tokenizer: Any = None) -> Any:
    """Load any registered architecture's checkpoint (``path``: a run directory, a step directory
    or the flat layout); the result has ``model``, ``settings``, ``tokenizer``, ``token_counts``,
    ``path`` and ``arch`` (the registry name that :func:`get_architecture` takes)."""
    from .checkpoint import resolve_checkpoint

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (train one with `dbert train --out {path}`)")
    arch = architecture_of(path)
    return arch.load(resolve_checkpoint(path) or path, device=device, tokenizer=tokenizer)
