"""DiffusionBERT as an :class:`~dbert_model.arch.Architecture` (registry name ``"diffusion"``).

Each hook is a thin call into the modules that do the work: :mod:`dbert_model.build` (networks),
:mod:`dbert_model.losses` (the D3PM / MDLM objectives), :mod:`dbert_model.evaluate` (the ELBO
perplexity), :mod:`dbert_model.generation` (the reverse process) and
:mod:`dbert_model.checkpoint` (its checkpoints, with every consistency check).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dbert_kernels import Sampling

from .arch import DEFAULT_SAMPLING, Architecture, StepLoss

__all__ = ["DiffusionBertArchitecture", "init_source"]

#: ``TrainConfig.init`` values that name a built-in source rather than a directory.
NAMED_INITS = ("minilm", "scratch", "tiny", "bert-base")


def init_source(cfg: Any, vocab_size: int) -> Any:
    """What ``cfg.init`` names, as :func:`dbert_model.build.build_masked_lm` accepts it: a config
    (``scratch``: MiniLM's, ``tiny``: 2 x 64), ``"minilm"``, ``"bert-base"`` or a directory."""
    from transformers import AutoConfig

    from .build import tiny_config
    from .checkpoint import is_checkpoint
    from .tokenizer import minilm_path

    if cfg.init == "scratch":
        return AutoConfig.from_pretrained(str(minilm_path()), local_files_only=True)
    if cfg.init == "tiny":
        return tiny_config(vocab_size, hidden=64, layers=2, heads=2, max_len=cfg.diffusion.max_len + 1)
    if cfg.init not in NAMED_INITS and is_checkpoint(cfg.init):
        raise ValueError(f"{cfg.init} is a dbert checkpoint: continue it with --out {cfg.init} (resume)")
    return cfg.init


def check_positions(settings: Any, config: Any, what: str) -> None:
    """``settings.max_len`` (+1 for the PTE time token) must fit the network's position table."""
    extra = 1 if settings.time_design == "pte" else 0
    positions = int(getattr(config, "max_position_embeddings", 10**9))
    if settings.max_len + extra > positions:
        raise ValueError(f"{what} {settings.max_len} (+{extra} time token) exceeds the model's {positions} positions")


class DiffusionBertArchitecture(Architecture):
    name = "diffusion"
    paper_metrics = True

    def build(self, cfg: Any, settings: Any) -> torch.nn.Module:
        from .build import build_masked_lm
        from .network import DiffusionBert
        from .tokenizer import VocabularyMismatchError

        mlm = build_masked_lm(init_source(cfg, settings.vocab_size))
        if int(mlm.config.vocab_size) != settings.vocab_size:
            raise VocabularyMismatchError(
                f"the init model {cfg.init!r} has {mlm.config.vocab_size} vocabulary rows but the tokenizer has "
                f"{settings.vocab_size} tokens: pass the tokenizer the model was trained with (--tokenizer)"
            )
        check_positions(settings, mlm.config, "max_len")
        return DiffusionBert(mlm, settings.time_design, settings.T, time_init=settings.time_init)

    def describe(self, settings: Any) -> str:
        return f"{settings.time_design}, {settings.schedule} schedule, {settings.loss} loss"

    def owns(self, path: Path) -> bool:
        return True  # the default architecture: any checkpoint that no other one claims

    def load(self, path: Path, *, device: Any = None, tokenizer: Any = None) -> Any:
        from .checkpoint import load_checkpoint

        return load_checkpoint(path, device=device, tokenizer=tokenizer)

    def loss(self, model: Any, ids: torch.Tensor, *, settings: Any, info: torch.Tensor, cfg: Any, step: int,
             shard: slice) -> StepLoss:
        from .losses import diffusion_loss

        out = diffusion_loss(model, ids, settings=settings, token_info=info, seed=cfg.seed, offset=step,
                             backend=cfg.backend, shard=shard)
        return StepLoss(out.loss, float(out.ce) * out.n_masked, float(out.n_masked))

    def validate(self, model: Any, settings: Any, info: torch.Tensor, split: Any, cfg: Any) -> tuple[dict[str, float], str]:
        from .evaluate import elbo_perplexity

        res = elbo_perplexity(model, settings, info, split, batch_size=cfg.batch_size, seed=cfg.seed + 1,
                              max_sentences=cfg.eval_sentences, backend=cfg.backend)
        return res, (f"NELBO {res['nelbo_per_sentence']:.2f} nats/sentence, {res['nats_per_word']:.3f} nats/word, "
                     f"PPL <= {res['perplexity']:.1f}")

    def sample(self, model: Any, settings: Any, tokenizer: Any, *, n: int, sampling: Sampling = DEFAULT_SAMPLING,
               seq_len: int | None = None, steps: int = 32, progress: bool = False,
               token_counts: torch.Tensor | None = None, **options: Any) -> tuple[torch.Tensor, Any]:
        """The reverse process (:func:`dbert_model.generation.sample_ids`). ``token_counts`` (a
        checkpoint's): with a spindle schedule, reveal with the per-token schedule unless
        ``sentence_level``; ``options``: ``strategy``, ``early_stop``, ``on_step``, the strategy's
        options and the other keyword arguments of :func:`dbert_kernels.generate`."""
        from dbert_kernels import token_information

        from .generation import sample_ids

        if seq_len is not None:  # it must fit the position table (one more position for the PTE time token)
            usable = int(getattr(model.config, "max_position_embeddings", 10**9)) - (settings.time_design == "pte")
            if seq_len > usable:
                raise ValueError(f"--seq-len {seq_len} exceeds the model's {usable} positions: use --seq-len <= {usable}")
        sentence_level = options.pop("sentence_level", False)
        info = None
        if token_counts is not None and settings.build_schedule().is_spindle and not sentence_level:
            info = token_information(token_counts, settings.spindle_form).to(next(model.parameters()).device)
        return sample_ids(model, settings, tokenizer, n=n, steps=steps, seq_len=seq_len, sampling=sampling,
                          token_info=info, progress=progress, return_stats=True, **options)

    def perplexity(self, loaded: Any, split: Any, *, batch_size: int, elbo_samples: int = 1, seed: int = 0,
                   progress: bool = False, backend: str = "auto") -> dict[str, float]:
        from .evaluate import elbo_perplexity

        info = loaded.token_info().to(next(loaded.model.parameters()).device)
        return elbo_perplexity(loaded.model, loaded.settings, info, split, samples=elbo_samples, batch_size=batch_size,
                               seed=seed, progress=progress, backend=backend)

    def report(self, results: dict[str, Any], loaded: Any, *, elbo_samples: int = 1) -> list[str]:
        r = results
        return [
            f"  NELBO bound (T = {r['T']:g} steps, {loaded.settings.loss} loss, Monte Carlo x {elbo_samples})",
            f"    with [SEP]/[PAD] {r['nelbo_per_sentence']:.2f} nats/sentence, {r['nats_per_word']:.3f} nats/word "
            f"-> perplexity per word <= {r['perplexity']:.2f}",
            f"    real tokens      {r['nelbo_real_per_sentence']:.2f} nats/sentence, {r['nats_per_wordpiece']:.3f} "
            f"nats/wordpiece -> perplexity per wordpiece <= {r['ppl_per_wordpiece']:.2f}",
            f"    per token        {r['nats_per_token']:.3f} nats/token (WordPieces + [SEP], as GPT-2 predicts them) "
            f"-> perplexity per token <= {r['perplexity_per_token']:.2f}",
        ]
