"""Training DiffusionBERT: AdamW, warm-up, gradient clipping, validation, checkpoints, resume.

Everything is reproducible from :class:`TrainConfig.seed`: the data order (a permutation per
epoch), the times and masks of each step (keyed on (seed, step)) and dropout (torch's RNG is
re-seeded at every step), so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from dbert_kernels import token_information

from .ar import ARCHS, ar_loss, ar_perplexity, build_gpt2, is_ar_checkpoint, load_ar, sample_ar
from .build import build_masked_lm
from .checkpoint import check_vocabulary, is_checkpoint, load_checkpoint, save_checkpoint
from .data import EncodedSplit, encode, load_corpus, token_counts
from .evaluate import elbo_perplexity
from .generation import decode, sample_ids
from .network import DiffusionBert
from .settings import DiffusionSettings
from .tokenizer import VocabularyMismatchError, load_tokenizer, minilm_path, special_ids, vocab_fingerprint

__all__ = ["TrainConfig", "TrainResult", "train", "resolve_device"]


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
    Diffusion: the fields of :class:`~dbert_model.settings.DiffusionSettings`.
    Data: ``data`` is ``"builtin"`` or a path (see :func:`dbert_model.data.load_corpus`);
    ``max_train_sentences`` caps the training split (None: all).
    ``bf16``: bfloat16 autocast for the forward pass (weights and optimizer stay float32).
    Stopping: ``max_steps`` sets the length (and the learning-rate schedule); ``stop_after`` (a
    step) or ``max_minutes`` end this call early with a checkpoint that a later call resumes.
    """

    out: str = "runs/dbert"
    arch: str = "diffusion"
    data: str = "builtin"
    init: str = "minilm"
    tokenizer: str | None = None
    time_design: str = "tad"
    schedule: str = "spindle"
    T: float = 1000.0
    spindle_lambda: float = 0.3
    spindle_form: str = "code"
    loss: str = "d3pm"
    hybrid_lambda: float = 0.01
    max_len: int = 64
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
    max_train_sentences: int | None = None
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    backend: str = "auto"
    resume: bool = True
    progress: bool = True

    def settings(self, tokenizer: Any) -> DiffusionSettings:
        return DiffusionSettings(
            time_design=self.time_design, schedule=self.schedule, T=self.T, spindle_lambda=self.spindle_lambda,
            spindle_form=self.spindle_form, loss=self.loss, hybrid_lambda=self.hybrid_lambda, max_len=self.max_len,
            vocab_size=len(tokenizer.get_vocab()), vocab_sha256=vocab_fingerprint(tokenizer),
            special_ids=special_ids(tokenizer),
        )


@dataclass
class TrainResult:
    """Where the checkpoint is and what happened: ``history`` (one dict per logged step) and
    ``validation`` (one dict per evaluation)."""

    path: Path
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """``"auto"``: CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _init_source(cfg: TrainConfig, vocab_size: int) -> Any:
    from transformers import AutoConfig

    from .build import tiny_config

    if cfg.init == "scratch":
        return AutoConfig.from_pretrained(str(minilm_path()), local_files_only=True)
    if cfg.init == "tiny":
        return tiny_config(vocab_size, hidden=64, layers=2, heads=2, max_len=cfg.max_len + 1)
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


def _check_config(cfg: TrainConfig) -> None:
    if cfg.arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {cfg.arch!r}")
    for name in ("batch_size", "max_steps", "eval_every", "save_every", "log_every", "eval_sentences"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise ValueError(f"lr must be > 0, got {cfg.lr}")
    if cfg.warmup_steps < 0 or cfg.grad_clip <= 0:
        raise ValueError("warmup_steps must be >= 0 and grad_clip > 0")


def train(cfg: TrainConfig, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train (or resume) a DiffusionBERT as configured; returns the checkpoint path and history.

    The checkpoint at ``cfg.out`` is rewritten every ``save_every`` steps and at the end; when it
    exists and ``cfg.resume`` is true, training continues from it (same settings required).
    """
    _check_config(cfg)
    log = log or print
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    resuming = cfg.resume and is_checkpoint(out) and (out / "trainer_state.json").is_file()

    if resuming:
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
        state = json.loads((out / "trainer_state.json").read_text())
        start_step = int(state["step"])
        history, validation = state.get("history", []), state.get("validation", [])
        log(f"resuming {out} at step {start_step}")
    else:
        tokenizer = load_tokenizer(_default_tokenizer_path(cfg))
        settings = cfg.settings(tokenizer)
        torch.manual_seed(cfg.seed)  # random initialisation (scratch, new head, time layers)
        if cfg.arch == "gpt2":
            model = build_gpt2(_init_source(cfg, settings.vocab_size), settings).to(device)
        mlm = None if cfg.arch == "gpt2" else build_masked_lm(_init_source(cfg, settings.vocab_size))
        if mlm is not None and int(mlm.config.vocab_size) != settings.vocab_size:
            raise VocabularyMismatchError(
                f"the init model {cfg.init!r} has {mlm.config.vocab_size} vocabulary rows but the tokenizer has "
                f"{settings.vocab_size} tokens: pass the tokenizer the model was trained with (--tokenizer)"
            )
        extra = 1 if cfg.time_design == "pte" else 0
        if mlm is not None and cfg.max_len + extra > int(getattr(mlm.config, "max_position_embeddings", 10**9)):
            raise ValueError(
                f"max_len {cfg.max_len} (+{extra} time token) exceeds the model's {mlm.config.max_position_embeddings} positions"
            )
        if mlm is not None:
            model = DiffusionBert(mlm, cfg.time_design, cfg.T).to(device)
        start_step, history, validation = 0, [], []

    corpus = load_corpus(cfg.data, verbose=True)
    train_sentences = corpus.train[: cfg.max_train_sentences] if cfg.max_train_sentences else corpus.train
    if len(train_sentences) < cfg.batch_size:
        raise ValueError(f"the training split has {len(train_sentences)} sentences, fewer than batch_size {cfg.batch_size}")
    train_split = encode(tokenizer, train_sentences, cfg.max_len)
    valid_split: EncodedSplit = encode(tokenizer, corpus.valid or corpus.test, cfg.max_len)
    counts = token_counts(train_split.ids, settings.vocab_size, settings.special_ids["pad"])
    if resuming:
        counts = loaded.token_counts
    info = token_information(counts, settings.spindle_form).to(device)
    log(
        f"data {corpus.source}: {len(train_split)} train / {len(valid_split)} valid sentences, "
        f"max_len {cfg.max_len}; model {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters "
        f"({cfg.init}, " + ("GPT-2" if cfg.arch == "gpt2" else f"{settings.time_design}, {settings.schedule} schedule, "
                             f"{settings.loss} loss") + f") on {device}"
    )

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "LayerNorm" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    if resuming and (out / "optimizer.pt").is_file():
        optimizer.load_state_dict(torch.load(out / "optimizer.pt", map_location=device, weights_only=True))

    def save(step: int) -> None:
        state = {"step": step, "config": asdict(cfg), "history": history, "validation": validation}
        save_checkpoint(out, model, settings, tokenizer, counts, trainer_state=state, optimizer_state=optimizer.state_dict())

    def validate(step: int) -> None:
        if cfg.arch == "gpt2":
            res = ar_perplexity(model, valid_split, settings.special_ids["pad"], batch_size=cfg.batch_size,
                                max_sentences=cfg.eval_sentences)
            validation.append({"step": step, **res})
            log(f"  valid @ {step}: NLL {res['nll_per_sentence']:.2f} nats/sentence, {res['nats_per_word']:.3f} "
                f"nats/word, PPL {res['perplexity']:.1f} (exact)")
            return
        res = elbo_perplexity(
            model, settings, info, valid_split, batch_size=cfg.batch_size, seed=cfg.seed + 1,
            max_sentences=cfg.eval_sentences, backend=cfg.backend,
        )
        validation.append({"step": step, **res})
        log(f"  valid @ {step}: NELBO {res['nelbo_per_sentence']:.2f} nats/sentence, "
            f"{res['nats_per_word']:.3f} nats/word, PPL <= {res['perplexity']:.1f}")

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.max_steps, initial=start_step, desc="training", unit="step", disable=not cfg.progress)
    started = time.monotonic()
    elapsed_before = history[-1]["elapsed_s"] if history else 0.0
    step = start_step
    model.train()
    window: list[tuple[float, float]] = []
    try:
        while step < min(cfg.max_steps, cfg.stop_after or cfg.max_steps):
            if cfg.max_minutes is not None and time.monotonic() - started > 60 * cfg.max_minutes:
                log(f"time budget of {cfg.max_minutes} min reached at step {step}")
                break
            torch.manual_seed(cfg.seed * 7919 + step)  # dropout: reproducible and resumable
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * _lr_factor(step, cfg)
            ids = train_split.ids[_batch_indices(step, len(train_split), cfg.batch_size, cfg.seed)].to(device)
            result = _step(model, optimizer, ids, settings, info, cfg, step)
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
                bar.write(f"step {step:5d}  loss {entry['loss']:.4f}  CE(masked) {entry['ce_masked']:.3f}  lr {entry['lr']:.2e}  {entry['elapsed_s']:.0f}s")
            if step % cfg.eval_every == 0:
                validate(step)
            if cfg.sample_every and step % cfg.sample_every == 0:
                ids = (sample_ar(model, settings, tokenizer, n=2, top_k=30, seed=cfg.seed) if cfg.arch == "gpt2" else
                       sample_ids(model, settings, tokenizer, n=2, steps=32, top_k=30, seed=cfg.seed, progress=False))
                texts = decode(tokenizer, ids, settings)
                for text in texts:
                    bar.write(f"  sample: {text}")
            if step % cfg.save_every == 0:
                save(step)
    finally:
        bar.close()
    if not validation or validation[-1]["step"] != step:
        validate(step)
    save(step)
    log(f"saved {out} (step {step})")
    return TrainResult(path=out, steps=step, history=history, validation=validation)


def _step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor, settings: DiffusionSettings,
    info: torch.Tensor, cfg: TrainConfig, step: int,
) -> tuple[float, float]:
    """One optimiser step; returns (loss, mean CE over masked positions)."""
    from .losses import diffusion_loss

    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):  # mixed precision (GPU)
        if cfg.arch == "gpt2":  # next-token CE; reported in both columns (every token is predicted)
            ar = ar_loss(model, ids, settings.special_ids["pad"])
            out = SimpleNamespace(loss=ar.loss, ce=ar.loss.detach())
        else:
            out = diffusion_loss(model, ids, settings=settings, token_info=info, seed=cfg.seed, offset=step, backend=cfg.backend)
    if not torch.isfinite(out.loss):
        raise FloatingPointError(f"the loss is not finite at step {step}: lower the learning rate (--lr)")
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return float(out.loss.detach()), float(out.ce)
