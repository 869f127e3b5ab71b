"""Training: AdamW, warm-up, gradient clipping, validation, checkpoints, resume, for any
registered architecture (:mod:`dbert_model.arch`: DiffusionBERT, its GPT-2 baseline, ...).

:func:`train` is a short loop over the architecture's hooks (build or load, loss, validate,
sample, save). Everything is reproducible from :class:`TrainConfig.seed`: the data order (a
permutation per epoch), the times and masks of each step (keyed on (seed, step)) and dropout
(torch's RNG is re-seeded at every step), so a resumed run continues exactly as an uninterrupted
one would; the running sums of the loss since the last log line are saved with each checkpoint,
so a resumed run also logs the same history.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from dbert_kernels import token_information

from .arch import DEFAULT_SAMPLING, Architecture, architecture_of, get_architecture
from .checkpoint import (
    OPTIMIZER_FILE,
    check_vocabulary,
    clean_stale_copies,
    is_checkpoint,
    read_trainer_state,
    resolve_checkpoint,
)
from .data import EncodedSplit, encode_cached, load_corpus, token_counts
from .generation import decode
from .settings import DiffusionSettings, TrainConfig
from .tokenizer import load_tokenizer

__all__ = ["TrainConfig", "TrainResult", "train", "resolve_device", "check_output_dir", "check_backend", "train_engine", "OutputDirError",
           "clip_warmup", "eta_line"]


@dataclass
class TrainResult:
    """Where the checkpoint is and what happened: ``history`` (one dict per logged step) and
    ``validation`` (one dict per evaluation; the main process's only); ``main_process``: False in
    the other processes of a multi-process run."""

    path: Path
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    main_process: bool = True


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else CPU; otherwise a torch device name (``cpu``, ``cuda``,
    ``cuda:1``...). Raises ValueError for an unknown name or a CUDA device that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: no CUDA GPU is available here; use --device cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: there are only {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    elif device.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"--device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    return device


def check_backend(backend: str, device: torch.device) -> None:
    """Raise ValueError naming ``--backend`` unless the sampling-op backend runs on ``device`` here."""
    from dbert_kernels import available_backends

    if backend == "auto":
        return
    here = available_backends(device)
    if backend not in here:
        raise ValueError(
            f"--backend {backend} does not run on {device.type} here (available: auto, {', '.join(here)}); "
            "use --backend auto"
        )


def _default_tokenizer_path(cfg: TrainConfig) -> Path | None:
    if cfg.tokenizer:
        return Path(cfg.tokenizer)
    if cfg.init not in ("minilm", "scratch", "tiny", "bert-base"):
        path = Path(cfg.init)
        if (path / "vocab.txt").is_file() or (path / "tokenizer.json").is_file():
            return path
    return None


def _lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then linear decay to 0.1 at max_steps."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    return max(0.1, 1.0 - 0.9 * (step - cfg.warmup_steps) / span)


def clip_warmup(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainConfig:
    """``cfg`` with a warm-up that is not shorter than the run (``warmup_steps >= max_steps``)
    clipped to a tenth of the run, said in one line; ``cfg`` itself otherwise."""
    if cfg.warmup_steps < cfg.max_steps:
        return cfg
    clipped = cfg.max_steps // 10
    log(f"warm-up of {cfg.warmup_steps} steps is not shorter than the run ({cfg.max_steps} steps): clipped to "
        f"{clipped} steps (a tenth of the run; set --warmup to choose)")
    return replace(cfg, warmup_steps=clipped)


#: Steps and seconds after which :func:`eta_line` extrapolates the time of the rest of the run.
ETA_AFTER_STEPS, ETA_AFTER_S = 10, 15.0


def eta_line(steps_done: int, seconds: float, steps_left: int, max_minutes: float | None = None) -> str | None:
    """One line estimating the time of the rest of the run, once ``ETA_AFTER_STEPS`` steps or
    ``ETA_AFTER_S`` seconds have passed in this call (None before): the mean step time so far times
    the steps left (validations and saves included where they happened), capped by ``max_minutes``."""
    if steps_done < 1 or (steps_done < ETA_AFTER_STEPS and seconds < ETA_AFTER_S):
        return None
    per_step = seconds / steps_done
    total = seconds + per_step * steps_left
    cap = ""
    if max_minutes is not None and total > 60 * max_minutes:
        total, cap = 60 * max_minutes, f" (--minutes {max_minutes:g} stops it first)"
    when = f"{total / 60:.0f} min" if total >= 90 else f"{total:.0f} s"
    return f"ETA ~{when} for {steps_done + steps_left} steps ({per_step:.2f} s/step){cap}"


def _batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    per_epoch = n // batch_size
    epoch, index = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[index * batch_size : (index + 1) * batch_size]


#: Prefix of the temporary file that checks a run directory is writable.
_WRITE_TEST_PREFIX = ".write-test-"


def check_output_dir(out: Path, *, resume: bool, overwrite: bool) -> bool:
    """Check that the run directory ``out`` may be written, before any training; create it.

    Returns True when ``out`` holds a checkpoint to resume. Raises :class:`OutputDirError`
    (a ValueError) when ``out`` is a file, is an existing directory that is not a dbert
    checkpoint (unless ``overwrite``), holds a checkpoint that ``resume=False`` would replace
    (unless ``overwrite``), or cannot be created or written.
    """
    from .checkpoint import LATEST_FILE

    if out.exists() and not out.is_dir():
        raise OutputDirError(f"--out {out} is a file, not a directory: choose another --out")
    holds = is_checkpoint(out)
    if holds and not resume and not overwrite:
        raise OutputDirError(
            f"{out} already holds a checkpoint and --no-resume was given: choose another --out "
            "(or add --overwrite to start over there)"
        )
    if holds and resume and read_trainer_state(out) is None and not overwrite:
        raise OutputDirError(
            f"{out} holds a checkpoint without training state (not written by `dbert train`), which cannot be "
            "resumed: choose another --out"
        )
    if out.is_dir() and not holds and not overwrite:
        # our own leftovers (and, under a multi-process launch, another process's write test) are not foreign
        ours = (".tmp-", ".trash-", _WRITE_TEST_PREFIX, LATEST_FILE)
        foreign = sorted(p.name for p in out.iterdir() if not p.name.startswith(ours))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise OutputDirError(
                f"--out {out} exists and is not a dbert checkpoint (it holds {shown}): choose another --out, or "
                "add --overwrite to write the checkpoints into it (its files are kept)"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=_WRITE_TEST_PREFIX):
            pass
    except OSError as exc:
        raise OutputDirError(f"--out {out} cannot be written ({exc.strerror or exc}): choose another --out") from exc
    return holds and resume and read_trainer_state(out) is not None


class OutputDirError(ValueError):
    """The run directory ``--out`` cannot be used (exists with other files, is a file, not writable)."""


def train(cfg: TrainConfig, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume) the architecture ``cfg.arch`` as configured; returns the checkpoint path and history.

    A checkpoint is written to the run directory ``cfg.out`` every ``save_every`` steps and at the
    end; when it holds one and ``cfg.resume`` is true, training continues from it (same settings
    required). Under a multi-process launch (``accelerate launch`` / ``torchrun``) every process
    calls this function: see :func:`train_engine` for what each one does.
    """
    arch = get_architecture(cfg.arch)
    accelerator, device = train_engine(cfg)
    world, main = accelerator.num_processes, accelerator.is_main_process
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ValueError(f"batch_size {cfg.batch_size} (the global batch) must be divisible by processes x grad_accum = "
                         f"{world} x {cfg.grad_accum}")
    log = (log or print) if main else _quiet
    check_backend(cfg.backend, device)
    out = Path(cfg.out)
    resuming = check_output_dir(out, resume=cfg.resume, overwrite=cfg.overwrite)
    cfg = clip_warmup(cfg, log)
    if main:
        clean_stale_copies(out)
    accelerator.wait_for_everyone()
    run = _Run.resume(cfg, arch, out, device, log) if resuming else _Run.start(cfg, arch, out, device)
    run.main, run.log = main, log
    train_split = run.load_data(accelerator, device, world)
    optimizer = arch.optimizer(run.model, cfg)
    if resuming:
        _load_optimizer(optimizer, resolve_checkpoint(out) / OPTIMIZER_FILE)
    model, run.optimizer = accelerator.prepare(run.model, optimizer)

    from tqdm.auto import tqdm

    step = run.step
    bar = tqdm(total=cfg.max_steps, initial=step, desc="training", unit="step", disable=not (cfg.progress and main))
    started, elapsed_before = time.monotonic(), (run.history[-1]["elapsed_s"] if run.history else 0.0)
    first_step, eta_said = step, False
    model.train()
    try:
        while step < min(cfg.max_steps, cfg.stop_after or cfg.max_steps):
            if cfg.max_minutes is not None and _all_agree(accelerator, time.monotonic() - started > 60 * cfg.max_minutes):
                log(f"time budget of {cfg.max_minutes} min reached at step {step}")
                break
            loss, ce = _step(accelerator, run, model, train_split, step)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", ce=f"{ce:.3f}")
            run.after_step(step, loss, ce, elapsed_before + time.monotonic() - started, bar.write)
            if not eta_said and main:
                line = eta_line(step - first_step, time.monotonic() - started,
                                min(cfg.max_steps, cfg.stop_after or cfg.max_steps) - step, cfg.max_minutes)
                if line:
                    bar.write(line)
                    eta_said = True
    finally:
        bar.close()
    seconds = time.monotonic() - started  # the training loop (with its periodic validations and saves)
    if not run.validation or run.validation[-1]["step"] != step:
        run.validate(step)
    run.save(step)
    accelerator.wait_for_everyone()
    trained = step - run.step
    log(f"saved {out} (step {step}; {trained} steps in {seconds:.1f} s, {trained / max(seconds, 1e-9):.2f} steps/s)")
    return TrainResult(path=out, steps=step, history=run.history, validation=run.validation, main_process=main)


@dataclass
class _Run:
    """The state of one training run and its hooks around each step: log, validate, sample, save.

    ``running``: the steps, loss sum and CE sum since the last history entry (saved with every
    checkpoint as ``trainer_state.json``'s ``running``, so a resume logs what an uninterrupted run logs).
    """

    cfg: TrainConfig
    arch: Architecture
    out: Path
    model: Any
    settings: DiffusionSettings
    tokenizer: Any
    counts: torch.Tensor | None
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    running: list[float] = field(default_factory=lambda: [0, 0.0, 0.0])
    last_saved: int = -1
    main: bool = True
    log: Callable[[str], None] = print
    info: torch.Tensor | None = None
    valid_split: EncodedSplit | None = None
    optimizer: Any = None

    @classmethod
    def start(cls, cfg: TrainConfig, arch: Architecture, out: Path, device: torch.device) -> _Run:
        tokenizer = load_tokenizer(_default_tokenizer_path(cfg))
        settings = cfg.settings(tokenizer)
        torch.manual_seed(cfg.seed)  # random initialisation (scratch, new head, time layers): same on every process
        return cls(cfg, arch, out, arch.build(cfg, settings).to(device), settings, tokenizer, None)

    @classmethod
    def resume(cls, cfg: TrainConfig, arch: Architecture, out: Path, device: torch.device, log: Callable[[str], None]) -> _Run:
        state = read_trainer_state(out)
        assert state is not None
        if architecture_of(out).name != cfg.arch:
            raise ValueError(f"cannot resume {out} with arch {cfg.arch!r}: it holds another architecture; use another --out")
        loaded = arch.load(resolve_checkpoint(out), device=device)
        if cfg.tokenizer:
            check_vocabulary(loaded.settings, load_tokenizer(cfg.tokenizer), where=f"checkpoint {out}")
        saved, wanted = loaded.settings.to_json(), cfg.settings(loaded.tokenizer).to_json()
        if wanted != saved:
            diff = {k: (v, wanted[k]) for k, v in saved.items() if wanted[k] != v}
            raise ValueError(f"cannot resume {out}: its settings differ from the ones asked for (saved, asked) {diff}; "
                             "use another --out or the same settings")
        log(f"resuming {loaded.path} at step {state['step']}")
        return cls(cfg, arch, out, loaded.model, loaded.settings, loaded.tokenizer, loaded.token_counts,
                   step=int(state["step"]), history=state["history"], validation=state["validation"],
                   running=_running(state, loaded.path), last_saved=int(state["step"]))

    def load_data(self, accelerator: Any, device: torch.device, world: int) -> EncodedSplit:
        """Encode the corpus (the main process first: it builds the cache), count the training
        tokens (a new run), and log what is trained; returns the training split."""
        cfg, settings = self.cfg, self.settings
        with accelerator.main_process_first():
            corpus = load_corpus(cfg.data, verbose=self.main)
            sentences = corpus.train[: cfg.max_train_sentences] if cfg.max_train_sentences else corpus.train
            if len(sentences) < cfg.batch_size:
                raise ValueError(f"the training split has {len(sentences)} sentences, fewer than batch_size {cfg.batch_size}")
            split = encode_cached(self.tokenizer, sentences, settings.max_len)
            self.valid_split = encode_cached(self.tokenizer, corpus.valid or corpus.test, settings.max_len)
        if self.counts is None:
            self.counts = token_counts(split.ids, settings.vocab_size, settings.special_ids["pad"],
                                       add_special_tokens=cfg.count_special_tokens)
        self.info = token_information(self.counts, settings.spindle_form).to(device)
        params = sum(p.numel() for p in self.model.parameters()) / 1e6
        per = cfg.batch_size // (world * cfg.grad_accum)
        self.log(f"data {corpus.source}: {len(split)} train / {len(self.valid_split)} valid sentences, max_len "
                 f"{settings.max_len}; model {params:.1f}M parameters ({cfg.init}, {self.arch.describe(settings)}) on "
                 f"{device}" + (f" x {world} processes" if world > 1 else "")
                 + (f", global batch {cfg.batch_size} = {world} x {cfg.grad_accum} x {per}" if world * cfg.grad_accum > 1 else ""))
        return split

    def after_step(self, step: int, loss: float, ce: float, elapsed: float, write: Callable[[str], None]) -> None:
        """Log every ``log_every`` steps (the mean since the last log line), validate, sample, save."""
        cfg = self.cfg
        self.running = [self.running[0] + 1, self.running[1] + loss, self.running[2] + ce]
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            n, loss_sum, ce_sum = self.running
            entry = {"step": step, "loss": loss_sum / n, "ce_masked": ce_sum / n,
                     "lr": self.optimizer.param_groups[0]["lr"], "elapsed_s": elapsed}
            self.history.append(entry)
            self.running = [0, 0.0, 0.0]
            if self.main:
                write(f"step {step:5d}  loss {entry['loss']:.4f}  CE(masked) {entry['ce_masked']:.3f}  "
                      f"lr {entry['lr']:.2e}  {entry['elapsed_s']:.0f}s")
        if step % cfg.eval_every == 0:
            self.validate(step)
        if self.main and cfg.sample_every and step % cfg.sample_every == 0:
            ids, _ = self.arch.sample(self.model, self.settings, self.tokenizer, n=2, steps=32,
                                      sampling=replace(DEFAULT_SAMPLING, seed=cfg.seed))
            for text in decode(self.tokenizer, ids, self.settings):
                write(f"  sample: {text}")
        if step % cfg.save_every == 0:
            self.save(step)

    def validate(self, step: int) -> None:
        if self.main:
            res, line = self.arch.validate(self.model, self.settings, self.info, self.valid_split, self.cfg)
            self.validation.append({"step": step, **res})
            self.log(f"  valid @ {step}: {line}")

    def save(self, step: int) -> None:
        if step == self.last_saved:
            return
        if self.main:
            n, loss_sum, ce_sum = self.running
            state = {"step": step, "config": self.cfg.to_json(), "history": self.history, "validation": self.validation,
                     "running": {"steps": n, "loss_sum": loss_sum, "ce_sum": ce_sum}}
            self.arch.save(self.out, self.model, self.settings, self.tokenizer, self.counts, step=step,
                           trainer_state=state, optimizer_state=self.optimizer.state_dict())
        self.last_saved = step


def _running(state: dict[str, Any], path: Path) -> list[float]:
    """The running loss sums of a trainer state (none in checkpoints written before they were saved)."""
    running = state.get("running", {"steps": 0, "loss_sum": 0.0, "ce_sum": 0.0})
    try:
        n, loss_sum, ce_sum = running["steps"], float(running["loss_sum"]), float(running["ce_sum"])
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise TypeError
    except (TypeError, KeyError, ValueError):
        raise ValueError(f"{path}/trainer_state.json is malformed ('running' is not the steps and loss sums since the "
                         "last log line): resume from an intact checkpoint or start over") from None
    return [n, loss_sum, ce_sum]


def train_engine(cfg: TrainConfig) -> tuple[Any, torch.device]:
    """The Hugging Face Accelerate engine of a run and its device.

    One process (``dbert train``): the device of ``cfg.device``. Under ``accelerate launch`` or
    ``torchrun`` (``WORLD_SIZE`` > 1): one device per process as the launcher assigns it
    (``cfg.device`` may be ``auto``, ``cpu`` or ``cuda``), gradients all-reduced by DDP (gloo on
    CPUs, NCCL on GPUs). Each process reads its rows of every global batch; only the main process
    logs, validates, samples and writes checkpoints. ``cfg.bf16``: the engine's bf16 mixed precision.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        if cfg.device not in ("auto", "cpu", "cuda"):
            raise ValueError(
                f"--device {cfg.device}: under a multi-process launch each process uses the device the launcher "
                "assigns; use --device auto (or cpu), and choose GPUs with CUDA_VISIBLE_DEVICES"
            )
        if cfg.device == "cuda":
            resolve_device("cuda")  # a clear error without a GPU
        cpu = cfg.device == "cpu" or not torch.cuda.is_available()
    else:
        wanted = resolve_device(cfg.device)
        if wanted.type == "cuda" and wanted.index is not None:
            torch.cuda.set_device(wanted)
        cpu = wanted.type == "cpu"
    if not distributed:  # one process: each run chooses its own precision and device
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=cpu, mixed_precision="bf16" if cfg.bf16 else "no")
    return accelerator, accelerator.device


def _all_agree(accelerator: Any, flag: bool) -> bool:
    """The main process's ``flag`` on every process (so that all stop at the same step)."""
    if accelerator.num_processes == 1:
        return flag
    from accelerate.utils import broadcast

    return bool(broadcast(torch.tensor([int(flag)], device=accelerator.device), from_process=0).item())


def _quiet(_: str) -> None:
    pass


def _load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Restore the optimizer state saved with a checkpoint (a clear error when it is missing or corrupt)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the checkpoint cannot be resumed exactly; start over with --no-resume --overwrite")
    try:
        optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))  # moved to the params' device
    except Exception as exc:  # pickle / zip / shape errors of a damaged file
        detail = " ".join(str(exc).split())[:160]
        raise ValueError(
            f"{path} is unreadable ({type(exc).__name__}: {detail}): the checkpoint is damaged; start over with "
            "--no-resume --overwrite or another --out"
        ) from exc


def _step(accelerator: Any, run: _Run, model: Any, train_split: EncodedSplit, step: int) -> tuple[float, float]:
    """One optimiser step on the global batch of ``step``; returns the global batch's (loss, mean CE
    over its scored positions: the masked ones, or every predicted token of an autoregressive model).

    The batch is cut into ``grad_accum`` micro-batches, and each of those into one shard per
    process; a process runs forward and backward on its shards only. Times and masks are drawn
    for the whole global batch (keyed on (seed, step)) and each shard's loss keeps the global
    normaliser, so the summed shard losses are the global batch's loss whatever the number of
    processes; the loss is scaled by the number of processes because DDP averages gradients.
    """
    from contextlib import nullcontext

    cfg, optimizer = run.cfg, run.optimizer
    world, rank = accelerator.num_processes, accelerator.process_index
    torch.manual_seed(cfg.seed * 7919 + step * world + rank)  # dropout: reproducible and resumable
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * _lr_factor(step, cfg)
    ids = train_split.ids[_batch_indices(step, len(train_split), cfg.batch_size, cfg.seed)].to(accelerator.device)
    micro = cfg.batch_size // cfg.grad_accum
    per_process = micro // world
    totals = torch.zeros(3, dtype=torch.float64)  # loss, CE sum over scored positions, scored positions
    optimizer.zero_grad(set_to_none=True)
    for a in range(cfg.grad_accum):
        start = a * micro + rank * per_process
        sync = nullcontext() if a == cfg.grad_accum - 1 else accelerator.no_sync(model)
        with sync:
            out = run.arch.loss(model, ids, settings=run.settings, info=run.info, cfg=cfg, step=step,
                                shard=slice(start, start + per_process))
            accelerator.backward(out.loss * world)
        totals += torch.tensor([float(out.loss.detach()), out.ce_sum, out.counted], dtype=torch.float64)
    if world > 1:
        totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()
    loss, ce_sum, n_masked = totals.tolist()
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss is not finite at step {step}: lower the learning rate (--lr)")
    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss, ce_sum / max(n_masked, 1.0)
