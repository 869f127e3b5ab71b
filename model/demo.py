"""The demo model that ``dbert generate`` uses when no ``--model`` is given.

A short, deterministic fine-tune of the pretrained MiniLM on the built-in corpus (CPU, a few
minutes), cached under ``<cache>/demo-minilm-v1``. It is a demonstration, not a good model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .checkpoint import is_checkpoint
from .data import cache_dir
from .settings import DiffusionSettings
from .train import TrainConfig, train

__all__ = ["DEMO_CONFIG", "demo_model_path", "ensure_demo_model"]

#: The demo fine-tune: MiniLM init, spindle schedule, TAD, D3PM hybrid loss, 32 tokens.
DEMO_CONFIG = TrainConfig(
    out="", data="builtin", init="minilm", diffusion=DiffusionSettings(max_len=32), batch_size=16, lr=3e-4, warmup_steps=20,
    max_steps=300, max_minutes=6.0, eval_every=100, eval_sentences=128, save_every=100, log_every=20, seed=0,
)


def demo_model_path() -> Path:
    return cache_dir() / "demo-minilm-v1"


def ensure_demo_model(log: Callable[[str], None] = print) -> Path:
    """Path of the cached demo model; trains it first (a few minutes on a CPU) if missing."""
    path = demo_model_path()
    if is_checkpoint(path):
        return path
    cfg = replace(DEMO_CONFIG, out=str(path))
    log(
        f"No --model given and no demo model cached yet: fine-tuning the pretrained MiniLM on the built-in "
        f"corpus for {cfg.max_steps} steps (at most {cfg.max_minutes:g} minutes), caching it in {path}.\n"
        "This happens once. Train a real model with `dbert train` and pass --model."
    )
    train(cfg, log=log)
    return path
