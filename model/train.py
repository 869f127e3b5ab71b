"""Training DiffusionBERT: AdamW, warm-up, gradient clipping, validation, checkpoints, resume.

Everything is reproducible from :class:`TrainConfig.seed`: the data order (a permutation per
epoch), the times and masks of each step (keyed on (seed, step)) and dropout (torch's RNG is
re-seeded at every step), so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from dbert_kernels import token_information

from .ar import ARCHS, ar_loss, ar_perplexity, build_gpt2, is_ar_checkpoint, load_ar, sample_ar
from .build import build_masked_lm
from .checkpoint import (
    OPTIMIZER_FILE,
    check_vocabulary,
    clean_stale_copies,
    is_checkpoint,
    load_checkpoint,
    read_trainer_state,
    save_checkpoint,
)
from .data import EncodedSplit, encode_cached, load_corpus, token_counts
from .evaluate import elbo_perplexity
from .generation import decode, sample_ids
from .network import DiffusionBert
from .settings import DiffusionSettings
from .tokenizer import VocabularyMismatchError, load_tokenizer, minilm_path, special_ids, vocab_fingerprint

__all__ = ["TrainConfig", "TrainResult", "train", "resolve_device", "check_output_dir", "check_backend", "train_engine", "OutputDirError"]


@dataclass
class TrainConfig:
    """All switches of a training run (JSON-serialisable; saved in ``trainer_state.json``).

    Architecture: ``arch`` is ``"diffusion"`` (DiffusionBERT) or ``"gpt2"`` (the autoregressive
    baseline of :mod:`dbert_model.ar`: a GPT-2 shaped like the BERT that ``init`` names, random
    weights, same tokenizer, data, order and schedule; the diffusion fields are then unused).
    Model: ``init`` is ``"minilm"`` (pretrained MiniLM, head built), ``"scratch"`` (the MiniLM
    architecture with random weights), ``"tiny"`` (2 x 64, for tests and demos), ``"bert-base"``
    (random bert-base size) or a local pretrained directory. ``tokenizer``: a directory or
    vocab.txt (default: the init directory's, else MiniLM's bert-base-uncased vocabulary).
    ``diffusion``: the :class:`~dbert_model.settings.DiffusionSettings` of the model (time design,
    schedule, loss, max_len...); its vocabulary fields are filled from the tokenizer.
    Data: ``data`` is ``"builtin"`` or a path (see :func:`dbert_model.data.load_corpus`);
    ``max_train_sentences`` caps the training split (None: all).
    ``batch_size`` is the global batch of one optimiser step, whatever the number of processes;
    ``grad_accum`` splits it into that many micro-batches (forward/backward one after the other).
    ``bf16``: bfloat16 mixed precision of the engine (weights and optimizer stay float32).
    Stopping: ``max_steps`` sets the length (and the learning-rate schedule); ``stop_after`` (a
    step) or ``max_minutes`` end this call early with a checkpoint that a later call resumes.
    Output: ``out`` is a run directory (see :mod:`dbert_model.checkpoint`); an existing ``out`` that
    is not a dbert checkpoint is refused unless ``overwrite`` (then the checkpoints are written
    next to its files, which are kept); ``resume=False`` with an existing checkpoint is refused
    unless ``overwrite`` (then training starts over and its first save replaces the old one).
    """

    out: str = "runs/dbert"
    arch: str = "diffusion"
    data: str = "builtin"
    init: str = "minilm"
    tokenizer: str | None = None
    diffusion: DiffusionSettings = field(default_factory=DiffusionSettings)
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int = 2000
    max_minutes: float | None = None
    stop_after: int | None = None
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_sentences: int = 256
    save_every: int = 500
    log_every: int = 10
    sample_every: int = 0
    grad_accum: int = 1
    max_train_sentences: int | None = None
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    backend: str = "auto"
    resume: bool = True
    overwrite: bool = False
    progress: bool = True

    def settings(self, tokenizer: Any) -> DiffusionSettings:
        """The run's :class:`DiffusionSettings` with the vocabulary fields filled from ``tokenizer``."""
        return replace(
            self.diffusion, vocab_size=len(tokenizer.get_vocab()), vocab_sha256=vocab_fingerprint(tokenizer),
            special_ids=special_ids(tokenizer),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the diffusion settings nested under ``"diffusion"``)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> TrainConfig:
        """Inverse of :meth:`to_json`; also reads the flat form of older checkpoints (the diffusion
        fields at the top level). Unknown keys are ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"a training configuration must be a JSON object, got {type(data).__name__}")
        own = {f.name for f in fields(cls)} - {"diffusion"}
        diffusion_fields = {f.name for f in fields(DiffusionSettings)}
        nested = data.get("diffusion", {})
        if not isinstance(nested, dict):
            raise ValueError(f"'diffusion' must be a JSON object, got {type(nested).__name__}")
        flat = {k: v for k, v in data.items() if k in diffusion_fields}
        return cls(
            **{k: v for k, v in data.items() if k in own},
            diffusion=DiffusionSettings(**{**flat, **{k: v for k, v in nested.items() if k in diffusion_fields}}),
        )


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


def _init_source(cfg: TrainConfig, vocab_size: int) -> Any:
    from transformers import AutoConfig

    from .build import tiny_config

    if cfg.init == "scratch":
        return AutoConfig.from_pretrained(str(minilm_path()), local_files_only=True)
    if cfg.init == "tiny":
        return tiny_config(vocab_size, hidden=64, layers=2, heads=2, max_len=cfg.diffusion.max_len + 1)
    if cfg.init not in ("minilm", "bert-base") and is_checkpoint(cfg.init):
        raise ValueError(f"{cfg.init} is a dbert checkpoint: continue it with --out {cfg.init} (resume)")
    return cfg.init


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


def _check_config(cfg: TrainConfig) -> None:
    if cfg.arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {cfg.arch!r}")
    for name in ("batch_size", "max_steps", "eval_every", "save_every", "log_every", "eval_sentences", "grad_accum"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    if cfg.warmup_steps < 0 or cfg.grad_clip <= 0:
        raise ValueError("warmup_steps must be >= 0 and grad_clip > 0")


def train(cfg: TrainConfig, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume) a DiffusionBERT, or its GPT-2 baseline (``cfg.arch``), as configured;
    returns the checkpoint path and history.

    A checkpoint is written to the run directory ``cfg.out`` every ``save_every`` steps and at the
    end; when it holds one and ``cfg.resume`` is true, training continues from it (same settings
    required). Under a multi-process launch (``accelerate launch`` / ``torchrun``) every process
    calls this function: see :func:`train_engine` for what each one does.
    """
    _check_config(cfg)
    accelerator, device = train_engine(cfg)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ValueError(
            f"batch_size {cfg.batch_size} (the global batch) must be divisible by processes x grad_accum = "
            f"{world} x {cfg.grad_accum}"
        )
    log = (log or print) if main else _quiet
    check_backend(cfg.backend, device)
    out = Path(cfg.out)
    resuming = check_output_dir(out, resume=cfg.resume, overwrite=cfg.overwrite)
    if main:
        clean_stale_copies(out)
    accelerator.wait_for_everyone()

    if resuming:
        state = read_trainer_state(out)
        assert state is not None
        if is_ar_checkpoint(out) != (cfg.arch == "gpt2"):
            raise ValueError(f"cannot resume {out} with arch {cfg.arch!r}: it holds another architecture; use another --out")
        loaded = load_ar(out, device=device) if cfg.arch == "gpt2" else load_checkpoint(out, device=device)
        tokenizer, model, settings = loaded.tokenizer, loaded.model, loaded.settings
        if cfg.tokenizer:
            check_vocabulary(settings, load_tokenizer(cfg.tokenizer), where=f"checkpoint {out}")
        wanted = cfg.settings(tokenizer)
        if wanted.to_json() != settings.to_json():
            diff = {k: (v, wanted.to_json()[k]) for k, v in settings.to_json().items() if wanted.to_json()[k] != v}
            raise ValueError(
                f"cannot resume {out}: its settings differ from the ones asked for (saved, asked) {diff}; "
                "use another --out or the same settings"
            )
        start_step = int(state["step"])
        history, validation = state["history"], state["validation"]
        log(f"resuming {loaded.path} at step {start_step}")
    else:
        tokenizer = load_tokenizer(_default_tokenizer_path(cfg))
        settings = cfg.settings(tokenizer)
        torch.manual_seed(cfg.seed)  # random initialisation (scratch, new head, time layers): same on every process
        if cfg.arch == "gpt2":
            model = build_gpt2(_init_source(cfg, settings.vocab_size), settings).to(device)
        else:
            mlm = build_masked_lm(_init_source(cfg, settings.vocab_size))
            if int(mlm.config.vocab_size) != settings.vocab_size:
                raise VocabularyMismatchError(
                    f"the init model {cfg.init!r} has {mlm.config.vocab_size} vocabulary rows but the tokenizer has "
                    f"{settings.vocab_size} tokens: pass the tokenizer the model was trained with (--tokenizer)"
                )
            extra = 1 if settings.time_design == "pte" else 0
            if settings.max_len + extra > int(getattr(mlm.config, "max_position_embeddings", 10**9)):
                raise ValueError(
                    f"max_len {settings.max_len} (+{extra} time token) exceeds the model's "
                    f"{mlm.config.max_position_embeddings} positions"
                )
            model = DiffusionBert(mlm, settings.time_design, settings.T, time_init=settings.time_init).to(device)
        start_step, history, validation = 0, [], []

    with accelerator.main_process_first():  # the main process builds (and caches) the corpus first
        corpus = load_corpus(cfg.data, verbose=main)
        train_sentences = corpus.train[: cfg.max_train_sentences] if cfg.max_train_sentences else corpus.train
        if len(train_sentences) < cfg.batch_size:
            raise ValueError(
                f"the training split has {len(train_sentences)} sentences, fewer than batch_size {cfg.batch_size}"
            )
        train_split = encode_cached(tokenizer, train_sentences, settings.max_len)
        valid_split: EncodedSplit = encode_cached(tokenizer, corpus.valid or corpus.test, settings.max_len)
    counts = loaded.token_counts if resuming else token_counts(train_split.ids, settings.vocab_size, settings.special_ids["pad"])
    info = token_information(counts, settings.spindle_form).to(device)
    log(
        f"data {corpus.source}: {len(train_split)} train / {len(valid_split)} valid sentences, "
        f"max_len {settings.max_len}; model {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters "
        f"({cfg.init}, " + ("GPT-2" if cfg.arch == "gpt2" else f"{settings.time_design}, {settings.schedule} schedule, "
                             f"{settings.loss} loss") + f") on {device}"
        + (f" x {world} processes" if world > 1 else "")
        + (f", global batch {cfg.batch_size} = {world} x {cfg.grad_accum} x {cfg.batch_size // (world * cfg.grad_accum)}"
           if world * cfg.grad_accum > 1 else "")
    )

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "LayerNorm" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    if resuming:
        _load_optimizer(optimizer, loaded.path / OPTIMIZER_FILE)
    raw_model = model
    model, optimizer = accelerator.prepare(model, optimizer)
    last_saved = start_step if resuming else -1

    def save(step: int) -> None:
        nonlocal last_saved
        if step == last_saved:
            return
        if main:
            state = {"step": step, "config": cfg.to_json(), "history": history, "validation": validation}
            save_checkpoint(out, raw_model, settings, tokenizer, counts, step=step, trainer_state=state,
                            optimizer_state=optimizer.state_dict())
        last_saved = step

    def validate(step: int) -> None:
        if not main:
            return
        if cfg.arch == "gpt2":
            res = ar_perplexity(raw_model, valid_split, settings.special_ids["pad"], batch_size=cfg.batch_size,
                                max_sentences=cfg.eval_sentences)
            validation.append({"step": step, **res})
            log(f"  valid @ {step}: NLL {res['nll_per_sentence']:.2f} nats/sentence, {res['nats_per_word']:.3f} "
                f"nats/word, PPL {res['perplexity']:.1f} (exact)")
            return
        res = elbo_perplexity(
            raw_model, settings, info, valid_split, batch_size=cfg.batch_size, seed=cfg.seed + 1,
            max_sentences=cfg.eval_sentences, backend=cfg.backend,
        )
        validation.append({"step": step, **res})
        log(f"  valid @ {step}: NELBO {res['nelbo_per_sentence']:.2f} nats/sentence, "
            f"{res['nats_per_word']:.3f} nats/word, PPL <= {res['perplexity']:.1f}")

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.max_steps, initial=start_step, desc="training", unit="step", disable=not (cfg.progress and main))
    started = time.monotonic()
    elapsed_before = history[-1]["elapsed_s"] if history else 0.0
    step = start_step
    model.train()
    window: list[tuple[float, float]] = []
    try:
        while step < min(cfg.max_steps, cfg.stop_after or cfg.max_steps):
            if cfg.max_minutes is not None and _all_agree(accelerator, time.monotonic() - started > 60 * cfg.max_minutes):
                log(f"time budget of {cfg.max_minutes} min reached at step {step}")
                break
            torch.manual_seed(cfg.seed * 7919 + step * world + rank)  # dropout: reproducible and resumable
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * _lr_factor(step, cfg)
            ids = train_split.ids[_batch_indices(step, len(train_split), cfg.batch_size, cfg.seed)].to(device)
            result = _step(accelerator, model, optimizer, ids, settings, info, cfg, step)
            window.append(result)
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{result[0]:.4f}", ce=f"{result[1]:.3f}")
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                entry = {
                    "step": step, "loss": sum(w[0] for w in window) / len(window),
                    "ce_masked": sum(w[1] for w in window) / len(window), "lr": optimizer.param_groups[0]["lr"],
                    "elapsed_s": elapsed_before + time.monotonic() - started,
                }
                history.append(entry)
                window = []
                if main:
                    bar.write(f"step {step:5d}  loss {entry['loss']:.4f}  CE(masked) {entry['ce_masked']:.3f}  "
                              f"lr {entry['lr']:.2e}  {entry['elapsed_s']:.0f}s")
            if step % cfg.eval_every == 0:
                validate(step)
            if main and cfg.sample_every and step % cfg.sample_every == 0:
                sampled = (sample_ar(raw_model, settings, tokenizer, n=2, top_k=30, seed=cfg.seed) if cfg.arch == "gpt2"
                           else sample_ids(raw_model, settings, tokenizer, n=2, steps=32, top_k=30, seed=cfg.seed,
                                           progress=False))
                for text in decode(tokenizer, sampled, settings):
                    bar.write(f"  sample: {text}")
            if step % cfg.save_every == 0:
                save(step)
    finally:
        bar.close()
    seconds = time.monotonic() - started  # the training loop (with its periodic validations and saves)
    if not validation or validation[-1]["step"] != step:
        validate(step)
    save(step)
    accelerator.wait_for_everyone()
    trained = step - start_step
    log(f"saved {out} (step {step}; {trained} steps in {seconds:.1f} s, {trained / max(seconds, 1e-9):.2f} steps/s)")
    return TrainResult(path=out, steps=step, history=history, validation=validation, main_process=main)


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


def _step(
    accelerator: Any, model: Any, optimizer: Any, ids: torch.Tensor, settings: DiffusionSettings,
    info: torch.Tensor, cfg: TrainConfig, step: int,
) -> tuple[float, float]:
    """One optimiser step on the global batch ``ids`` ``[batch_size, L]``; returns the global batch's
    (loss, mean CE over masked positions). For ``arch="gpt2"`` the loss is the next-token CE of
    :func:`dbert_model.ar.ar_loss` and the CE is over the predicted tokens (the same number).

    The batch is cut into ``grad_accum`` micro-batches, and each of those into one shard per
    process; a process runs forward and backward on its shards only. Times and masks are drawn
    for the whole global batch (keyed on (seed, step)) and each shard's loss keeps the global
    normaliser, so the summed shard losses are the global batch's loss whatever the number of
    processes (the GPT-2 loss likewise: the global batch's predicted tokens are its normaliser); the
    loss is scaled by the number of processes because DDP averages gradients.
    """
    from contextlib import nullcontext

    from .losses import diffusion_loss

    world, rank = accelerator.num_processes, accelerator.process_index
    micro = cfg.batch_size // cfg.grad_accum
    per_process = micro // world
    totals = torch.zeros(3, dtype=torch.float64)  # loss, CE sum over masked positions, masked positions
    optimizer.zero_grad(set_to_none=True)
    for a in range(cfg.grad_accum):
        start = a * micro + rank * per_process
        shard = slice(start, start + per_process)
        sync = nullcontext() if a == cfg.grad_accum - 1 else accelerator.no_sync(model)
        with sync:
            if cfg.arch == "gpt2":  # next-token CE: every predicted token counts as a "masked" position
                ar = ar_loss(model, ids, settings.special_ids["pad"], shard=shard)
                loss, ce_sum, counted = ar.loss, float(ar.nll.sum()), float(ar.tokens.sum())
            else:
                out = diffusion_loss(
                    model, ids, settings=settings, token_info=info, seed=cfg.seed, offset=step, backend=cfg.backend,
                    shard=shard,
                )
                loss, ce_sum, counted = out.loss, float(out.ce) * out.n_masked, float(out.n_masked)
            accelerator.backward(loss * world)
        totals += torch.tensor([float(loss.detach()), ce_sum, counted], dtype=torch.float64)
    if world > 1:
        totals = accelerator.reduce(totals.to(accelerator.device), reduction="sum").cpu()
    loss, ce_sum, n_masked = totals.tolist()
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss is not finite at step {step}: lower the learning rate (--lr)")
    accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss, ce_sum / max(n_masked, 1.0)
