"""Checkpoints: a directory that generation and evaluation can use with nothing else.

Layout::

    model.safetensors        DiffusionBert weights (backbone + time modules)
    config.json              the backbone's Hugging Face config
    dbert.json               DiffusionSettings (schedule, lambda, T, time design, loss, vocab)
    token_stats.safetensors  token counts of the training split (-> token information)
    tokenizer.json, ...      the tokenizer (save_pretrained), plus vocab.txt (tokens in id order)
    trainer_state.json, optimizer.pt   (training checkpoints only: resume state)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dbert_kernels import token_information

from .network import DiffusionBert
from .settings import SETTINGS_FILE, DiffusionSettings
from .tokenizer import VocabularyMismatchError, load_tokenizer, vocab_fingerprint

__all__ = ["LoadedModel", "save_checkpoint", "load_checkpoint", "is_checkpoint", "check_vocabulary"]

WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "token_stats.safetensors"


@dataclass
class LoadedModel:
    """What :func:`load_checkpoint` returns."""

    model: DiffusionBert
    settings: DiffusionSettings
    tokenizer: Any
    token_counts: torch.Tensor
    path: Path

    def token_info(self) -> torch.Tensor:
        """``[V]`` token information for the checkpoint's spindle form."""
        return token_information(self.token_counts, self.settings.spindle_form)


def is_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a dbert checkpoint directory."""
    return Path(path, SETTINGS_FILE).is_file()


def check_vocabulary(settings: DiffusionSettings, tokenizer: Any, where: str = "the checkpoint") -> None:
    """Raise :class:`VocabularyMismatchError` unless ``tokenizer`` has the settings' vocabulary."""
    size = len(tokenizer.get_vocab())
    digest = vocab_fingerprint(tokenizer)
    if size != settings.vocab_size or digest != settings.vocab_sha256:
        raise VocabularyMismatchError(
            f"{where} was trained with a different vocabulary ({settings.vocab_size} tokens, sha256 "
            f"{settings.vocab_sha256[:12]}) than the tokenizer given ({size} tokens, sha256 {digest[:12]}): "
            "token ids would mean different words. Use the checkpoint's own tokenizer (the default) or "
            "train a new model with this vocabulary."
        )


def save_checkpoint(
    directory: str | Path,
    model: DiffusionBert,
    settings: DiffusionSettings,
    tokenizer: Any,
    token_counts: torch.Tensor,
    *,
    trainer_state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint to ``directory`` atomically (a temporary directory renamed at the end)."""
    from safetensors.torch import save_file, save_model

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        save_model(model, str(tmp / WEIGHTS_FILE))
        model.config.to_json_file(str(tmp / "config.json"))
        settings.save(tmp)
        tokenizer.save_pretrained(str(tmp))
        if not (tmp / "vocab.txt").is_file():
            tokens = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
            (tmp / "vocab.txt").write_text("".join(f"{tok}\n" for tok, _ in tokens), encoding="utf-8")
        save_file({"counts": token_counts.to(torch.int64).contiguous().cpu()}, str(tmp / STATS_FILE))
        _apply_umask(tmp)
        if trainer_state is not None:
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2) + "\n")
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _apply_umask(directory: Path) -> None:
    """mkdtemp and safetensors create owner-only files: give the checkpoint the usual permissions."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(directory, 0o777 & ~mask)
    for item in directory.iterdir():
        os.chmod(item, 0o666 & ~mask)


def load_checkpoint(
    path: str | Path,
    *,
    device: torch.device | str | None = None,
    tokenizer: Any = None,
) -> LoadedModel:
    """Load a checkpoint written by :func:`save_checkpoint` (model in eval mode).

    ``tokenizer``: use this tokenizer instead of the checkpoint's own; it must have the same
    vocabulary (:class:`~dbert_model.tokenizer.VocabularyMismatchError` otherwise).
    """
    from safetensors.torch import load_file, load_model
    from transformers import AutoConfig, AutoModelForMaskedLM

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (train one with `dbert train --out {path}`)")
    settings = DiffusionSettings.load(path)
    if not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {WEIGHTS_FILE}: the checkpoint is incomplete")
    tok = load_tokenizer(path) if tokenizer is None else tokenizer
    check_vocabulary(settings, tok, where=f"checkpoint {path}")
    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if int(config.vocab_size) != settings.vocab_size:
        raise VocabularyMismatchError(
            f"checkpoint {path}: the network has {config.vocab_size} vocabulary rows but dbert.json says "
            f"{settings.vocab_size}; the checkpoint is inconsistent"
        )
    model = DiffusionBert(AutoModelForMaskedLM.from_config(config), settings.time_design, settings.T)
    missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match its settings (time_design={settings.time_design!r}): "
            f"missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}"
        )
    counts = load_file(str(path / STATS_FILE))["counts"]
    model = model.to(device).eval()
    return LoadedModel(model=model, settings=settings, tokenizer=tok, token_counts=counts, path=path)
