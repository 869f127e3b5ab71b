"""Checkpoints: a directory that generation and evaluation can use with nothing else.

Files of one checkpoint::

    model.safetensors        DiffusionBert weights (backbone + time modules)
    config.json              the backbone's Hugging Face config
    dbert.json               DiffusionSettings (schedule, lambda, T, time design, loss, vocab)
    token_stats.safetensors  token counts of the training split (-> token information)
    tokenizer.json, ...      the tokenizer (save_pretrained), plus vocab.txt (tokens in id order)
    trainer_state.json, optimizer.pt   (training checkpoints only: resume state)

A run directory (what ``dbert train --out`` names and :func:`save_checkpoint` writes) holds one
complete checkpoint per step directory and a pointer to the current one::

    RUN/checkpoint-00000500/   the files above
    RUN/latest                 one line: the name of the current step directory

A save writes the new step directory under a temporary name (``.tmp-...``), fsyncs every file
and the directory, renames it to ``checkpoint-<step>`` (so a ``checkpoint-*`` directory is always
complete), fsyncs the run directory, then switches ``latest`` with one rename (``os.replace``)
and only then deletes the previous step directory. A kill or Ctrl-C at any point leaves
``latest`` naming a complete checkpoint (the previous or the new one); temporary and half-deleted
copies (``.tmp-*``, ``.trash-*``) left by a kill are removed by the next save.

:func:`resolve_checkpoint` finds the files of a path: the step directory named by ``latest`` (the
newest complete one if the pointer is missing or broken), or the path itself when it holds the
files directly (a step directory, or the flat layout of older versions).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dbert_kernels import token_information

from .network import DiffusionBert
from .settings import SETTINGS_FILE, DiffusionSettings
from .tokenizer import VocabularyMismatchError, load_tokenizer, vocab_fingerprint

__all__ = [
    "LoadedModel",
    "save_checkpoint",
    "load_checkpoint",
    "is_checkpoint",
    "check_vocabulary",
    "resolve_checkpoint",
    "read_trainer_state",
    "SAVE_FAULT_POINTS",
]

WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "token_stats.safetensors"
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
LATEST_FILE = "latest"
_STEP_PREFIX = "checkpoint-"
_STEP_DIR = re.compile(r"checkpoint-(\d{8,})(?:\.(\d+))?")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


@dataclass
class LoadedModel:
    """What :func:`load_checkpoint` returns (``arch``: its architecture's registry name, see
    :mod:`dbert_model.arch`)."""

    model: DiffusionBert
    settings: DiffusionSettings
    tokenizer: Any
    token_counts: torch.Tensor
    path: Path
    arch: str = "diffusion"

    def token_info(self) -> torch.Tensor:
        """``[V]`` token information for the checkpoint's spindle form."""
        return token_information(self.token_counts, self.settings.spindle_form)


def resolve_checkpoint(path: str | Path) -> Path | None:
    """The directory that holds the checkpoint files of ``path``, or None if there is none.

    A run directory resolves to the step directory named by its ``latest`` pointer, or to its
    newest complete ``checkpoint-*`` directory if the pointer is missing or names no checkpoint; a
    directory with ``dbert.json`` (a step directory, or the flat layout) resolves to itself.
    """
    path = Path(path)
    if not path.is_dir():
        return None
    pointer = path / LATEST_FILE
    if pointer.is_file():
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            name = ""
        if _STEP_DIR.fullmatch(name) and (path / name / SETTINGS_FILE).is_file():
            return path / name
    steps = _step_dirs(path)
    if steps:
        return steps[-1]
    return path if (path / SETTINGS_FILE).is_file() else None


def is_checkpoint(path: str | Path) -> bool:
    """True when ``path`` holds a dbert checkpoint (a run directory or a checkpoint's files)."""
    return resolve_checkpoint(path) is not None


def read_trainer_state(path: str | Path) -> dict[str, Any] | None:
    """The training state (``step``, ``config``, ``history``, ``validation``) of the checkpoint at
    ``path``; None when it has none (not a training checkpoint). Raises ValueError when the file is
    unreadable or malformed."""
    resolved = resolve_checkpoint(path)
    if resolved is None or not (resolved / STATE_FILE).is_file():
        return None
    file = resolved / STATE_FILE
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file} is unreadable ({exc}): resume from an intact checkpoint or start over") from exc
    step = state.get("step") if isinstance(state, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{file} is malformed (no integer 'step'): resume from an intact checkpoint or start over")
    for key in ("history", "validation"):
        if not isinstance(state.setdefault(key, []), list):
            raise ValueError(f"{file} is malformed ('{key}' is not a list)")
    if not isinstance(state.setdefault("config", {}), dict):
        raise ValueError(f"{file} is malformed ('config' is not an object)")
    return state


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
    step: int = 0,
    trainer_state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of ``step`` into the run directory ``directory`` atomically (see the
    module docstring); returns the new step directory. Files in ``directory`` that are not
    checkpoints of this package are left alone."""
    from safetensors.torch import save_file, save_model

    run = Path(directory)
    run.mkdir(parents=True, exist_ok=True)
    clean_stale_copies(run)
    name = _free_step_name(run, step)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}-", dir=run))
    try:
        save_model(model, str(tmp / WEIGHTS_FILE))
        _fault("weights")
        model.config.to_json_file(str(tmp / "config.json"))
        settings.save(tmp)
        _fault("settings")
        tokenizer.save_pretrained(str(tmp))
        if not (tmp / "vocab.txt").is_file():
            tokens = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
            (tmp / "vocab.txt").write_text("".join(f"{tok}\n" for tok, _ in tokens), encoding="utf-8")
        save_file({"counts": token_counts.to(torch.int64).contiguous().cpu()}, str(tmp / STATS_FILE))
        _fault("tokenizer")
        if trainer_state is not None:
            (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2) + "\n")
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        _fault("state")
        _apply_umask(tmp)
        for item in tmp.iterdir():
            _fsync(item)
        _fsync(tmp)
        _fault("synced")
        final = run / name
        os.rename(tmp, final)
        _fsync(run)
        _fault("renamed")
        pointer_tmp = run / f"{LATEST_FILE}.tmp"
        with open(pointer_tmp, "w", encoding="utf-8") as handle:
            handle.write(name + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        _fault("pointer-written")
        os.replace(pointer_tmp, run / LATEST_FILE)
        _fsync(run)
        _fault("switched")
        _remove_previous(run, keep=final)
        _fault("cleaned")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def clean_stale_copies(run: Path) -> None:
    """Remove what a killed save leaves in the run directory ``run``: temporary step directories,
    half-deleted previous ones, an unswitched pointer and step directories other than the one
    ``latest`` names (never the current checkpoint)."""
    if not run.is_dir():
        return
    for item in run.iterdir():
        if item.is_dir() and item.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
            shutil.rmtree(item, ignore_errors=True)
    (run / f"{LATEST_FILE}.tmp").unlink(missing_ok=True)
    current = resolve_checkpoint(run)
    if current is not None and current.parent == run and (run / LATEST_FILE).is_file():
        _remove_previous(run, keep=current)  # superseded step directories and unswitched new ones
    for sibling in (run.parent.glob(f".{run.name}.*") if run.name else ()):  # the older layout's copies
        if sibling.is_dir() and (sibling.name == f".{run.name}.old" or re.fullmatch(rf"\.{re.escape(run.name)}\.\w{{8}}", sibling.name)):
            if (sibling / SETTINGS_FILE).is_file() or not any(sibling.iterdir()):
                shutil.rmtree(sibling, ignore_errors=True)


#: The points of a save at which :envvar:`DBERT_CHECKPOINT_FAULT` can stop the process, in order.
SAVE_FAULT_POINTS = (
    "weights", "settings", "tokenizer", "state", "synced", "renamed", "pointer-written", "switched", "cleaned",
)

#: Called with the name of each point of :data:`SAVE_FAULT_POINTS` as a save passes it (tests).
fault_hook: Callable[[str], None] | None = None
_fault_count = 0


def _fault(point: str) -> None:
    """Fault injection: ``DBERT_CHECKPOINT_FAULT=kill@N`` (SIGKILL) or ``interrupt@N`` (SIGINT)
    stops this process at the N-th fault point it passes (counting from 1 over all saves)."""
    global _fault_count
    _fault_count += 1
    if fault_hook is not None:
        fault_hook(point)
    spec = os.environ.get("DBERT_CHECKPOINT_FAULT", "")
    if spec:
        action, _, when = spec.partition("@")
        if when.isdigit() and int(when) == _fault_count:
            os.kill(os.getpid(), signal.SIGKILL if action == "kill" else signal.SIGINT)


def _step_dirs(run: Path) -> list[Path]:
    """Complete step directories of ``run``, oldest first (by step, then by name)."""
    found = []
    for item in run.iterdir():
        match = _STEP_DIR.fullmatch(item.name)
        if match and (item / SETTINGS_FILE).is_file():
            found.append((int(match.group(1)), int(match.group(2) or 0), item))
    return [item for *_, item in sorted(found)]


def _free_step_name(run: Path, step: int) -> str:
    """``checkpoint-<step>``; a leftover of that name that ``latest`` does not name (a save killed
    before its pointer switch) is removed, the current checkpoint is kept (then ``.1``, ``.2``...)."""
    name = f"{_STEP_PREFIX}{step:08d}"
    current = resolve_checkpoint(run)
    if (run / name).is_dir() and run / name != current and (run / LATEST_FILE).is_file():
        trash = run / f"{_TRASH_PREFIX}{name}"
        os.rename(run / name, trash)
        shutil.rmtree(trash, ignore_errors=True)
    n = 0
    while (run / name).exists():
        n += 1
        name = f"{_STEP_PREFIX}{step:08d}.{n}"
    return name


def _remove_previous(run: Path, keep: Path) -> None:
    """Delete every step directory but ``keep`` (renamed to ``.trash-*`` first, so a kill never
    leaves a half-deleted ``checkpoint-*``), and the files of a flat-layout checkpoint."""
    flat = (run / SETTINGS_FILE).is_file()
    for item in list(run.iterdir()):
        if item != keep and item.is_dir() and _STEP_DIR.fullmatch(item.name):
            trash = run / f"{_TRASH_PREFIX}{item.name}"
            os.rename(item, trash)
            shutil.rmtree(trash, ignore_errors=True)
    if flat:
        for name in os.listdir(keep):
            if (run / name).is_file():
                (run / name).unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    ``path``: a run directory (its current checkpoint is loaded), a step directory or a directory
    in the flat layout. ``LoadedModel.path`` is the directory the files were read from.

    ``tokenizer``: use this tokenizer instead of the checkpoint's own; it must have the same
    vocabulary (:class:`~dbert_model.tokenizer.VocabularyMismatchError` otherwise).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, load_model
    from transformers import AutoConfig, AutoModelForMaskedLM

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (train one with `dbert train --out {path}`)")
    path = resolve_checkpoint(path) or path
    settings = DiffusionSettings.load(path)
    if not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {WEIGHTS_FILE}: the checkpoint is incomplete")
    tok = load_tokenizer(path) if tokenizer is None else tokenizer
    check_vocabulary(settings, tok, where=f"checkpoint {path}")
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        vocab_rows, positions = int(config.vocab_size), int(getattr(config, "max_position_embeddings", 10**9))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path / 'config.json'} is unreadable ({exc}): the checkpoint is damaged") from exc
    if vocab_rows != settings.vocab_size:
        raise VocabularyMismatchError(
            f"checkpoint {path}: the network has {config.vocab_size} vocabulary rows but dbert.json says "
            f"{settings.vocab_size}; the checkpoint is inconsistent"
        )
    needed = settings.max_len + (1 if settings.time_design == "pte" else 0)
    if needed > positions:
        raise ValueError(
            f"checkpoint {path}: dbert.json's max_len {settings.max_len} needs {needed} positions but the network "
            f"has {positions} (config.json): the checkpoint is inconsistent"
        )
    try:
        model = DiffusionBert(AutoModelForMaskedLM.from_config(config), settings.time_design, settings.T)
        missing, unexpected = load_model(model, str(path / WEIGHTS_FILE), strict=False)
    except (SafetensorError, RuntimeError, OSError, ValueError, TypeError) as exc:
        raise ValueError(
            f"{path / WEIGHTS_FILE} cannot be loaded into the network of config.json "
            f"({type(exc).__name__}: {_first_line(exc)}): the checkpoint is damaged or was edited"
        ) from exc
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match its settings (time_design={settings.time_design!r}): "
            f"missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]}"
        )
    try:
        counts = load_file(str(path / STATS_FILE))["counts"]
    except (SafetensorError, OSError, KeyError) as exc:
        raise ValueError(f"{path / STATS_FILE} is unreadable ({_first_line(exc)}): the checkpoint is damaged") from exc
    if counts.dim() != 1 or counts.numel() != settings.vocab_size or counts.is_floating_point() or (counts < 0).any():
        raise ValueError(
            f"{path / STATS_FILE} does not hold [{settings.vocab_size}] non-negative integer counts: the checkpoint is damaged"
        )
    model = model.to(device).eval()
    return LoadedModel(model=model, settings=settings, tokenizer=tok, token_counts=counts, path=path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
