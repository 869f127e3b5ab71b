"""The demo model that ``dbert generate`` uses when no ``--model`` is given.

A fixed, deterministic fine-tune of the pretrained MiniLM on the built-in corpus (:data:`DEMO_CONFIG`:
a number of steps, no wall-clock cap, so it is the same model on every machine; a few minutes on a
2-core CPU). It is cached under ``<cache>/demo-minilm-<recipe hash>``: a changed recipe gets a new
directory and is trained again. ``dbert demo`` trains it (``--rebuild`` trains it again);
``dbert generate --rebuild-demo`` does the same before sampling. It is a demonstration, not a good model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .checkpoint import is_checkpoint, read_trainer_state
from .data import cache_dir
from .settings import DiffusionSettings
from .train import TrainConfig, train

__all__ = [
    "DEMO_CONFIG",
    "DEMO_SECONDS_PER_STEP",
    "demo_recipe_hash",
    "demo_model_path",
    "demo_estimate_seconds",
    "is_demo_complete",
    "ensure_demo_model",
]

#: The demo fine-tune: MiniLM init, spindle schedule, TAD, D3PM hybrid loss, 32 tokens, a fixed
#: number of steps (no time cap), validated once at the end on 128 sentences.
DEMO_CONFIG = TrainConfig(
    out="", data="builtin", init="minilm", diffusion=DiffusionSettings(max_len=32), batch_size=16, lr=5e-4,
    warmup_steps=30, max_steps=300, eval_every=300, eval_sentences=128, save_every=300, log_every=20, seed=0,
)

#: Seconds per training step of :data:`DEMO_CONFIG` measured on an idle 2-core CPU (AMD EPYC, the
#: default threads: 397.9 s for the 300 steps and the validation), for the estimate printed before
#: training; a loaded machine is slower.
DEMO_SECONDS_PER_STEP = 1.3

#: Fixed costs outside the steps (loading MiniLM and the corpus, the final validation and save), in seconds.
DEMO_OVERHEAD_SECONDS = 20.0

#: Fields of the configuration that do not change the trained model (where it goes, how it reports).
_NOT_RECIPE = ("out", "progress", "resume", "overwrite", "device", "backend")


def demo_recipe_hash(cfg: TrainConfig = DEMO_CONFIG) -> str:
    """A short hash (8 hex digits) of everything in ``cfg`` that changes the trained model."""
    recipe = {k: v for k, v in cfg.to_json().items() if k not in _NOT_RECIPE}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]


def demo_model_path(cfg: TrainConfig = DEMO_CONFIG) -> Path:
    """Cache directory of the demo model trained with ``cfg``: ``<cache>/demo-minilm-<recipe hash>``."""
    return cache_dir() / f"demo-minilm-{demo_recipe_hash(cfg)}"


def demo_estimate_seconds(cfg: TrainConfig = DEMO_CONFIG) -> float:
    """Expected training time of ``cfg`` on an idle 2-core CPU, in seconds (steps x measured step time + overhead)."""
    return cfg.max_steps * DEMO_SECONDS_PER_STEP + DEMO_OVERHEAD_SECONDS


def is_demo_complete(path: Path, cfg: TrainConfig = DEMO_CONFIG) -> bool:
    """True when ``path`` holds a checkpoint trained for all of ``cfg.max_steps``."""
    if not is_checkpoint(path):
        return False
    state = read_trainer_state(path)
    return state is not None and int(state.get("step", 0)) >= cfg.max_steps


def _stale_demo_dirs(current: Path) -> list[Path]:
    root = current.parent
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("demo-minilm-*") if p.is_dir() and p != current)


def _load_note() -> str:
    """A warning when other work already keeps every core busy (the estimate is for an idle machine)."""
    try:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
    except OSError:  # no load average on this platform
        return ""
    if load < cores:
        return ""
    return f"The load average is {load:.1f} on {cores} cores: other work is running, so training will take longer."


def ensure_demo_model(
    log: Callable[[str], None] = print,
    *,
    rebuild: bool = False,
    cfg: TrainConfig = DEMO_CONFIG,
    trainer: Callable[..., object] = train,
) -> Path:
    """Path of the cached demo model; trains it first if it is missing or unfinished, or when ``rebuild``.

    ``cfg`` is the recipe (its ``out`` is ignored: the directory is :func:`demo_model_path`);
    ``trainer`` is the training function (:func:`dbert_model.train.train`; replaced in tests).
    """
    path = demo_model_path(cfg)
    if rebuild and path.exists():
        log(f"--rebuild: removing the cached demo model {path}")
        shutil.rmtree(path)
    elif is_demo_complete(path, cfg):
        return path
    run = replace(cfg, out=str(path), overwrite=True)
    minutes = demo_estimate_seconds(cfg) / 60
    log(
        f"Training the demo model: the pretrained MiniLM fine-tuned on the built-in corpus for {cfg.max_steps} steps "
        f"(batch {cfg.batch_size}, {cfg.diffusion.max_len} tokens), cached in {path}.\n"
        f"Expected time: about {minutes:.0f} minutes on an idle 2-core CPU (longer on a busy one). This happens once; "
        "`dbert demo --rebuild` trains it again. Train a real model with `dbert train` and pass --model."
    )
    busy = _load_note()
    if busy:
        log(busy)
    stale = _stale_demo_dirs(path)
    if stale:
        log("Older demo models (another recipe) can be deleted: " + ", ".join(str(p) for p in stale))
    trainer(run, log=log)
    return path
