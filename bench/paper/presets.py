"""Sizes of the paper-claims run (``python -m bench.paper``) and the list of variants it trains.

A :class:`Preset` fixes everything that must be equal across variants (steps, batch, data,
learning rate, seeds); a :class:`Variant` is one trained model (schedule x time design x init x
seed). Variants shared by several comparisons are trained once: the baseline
(spindle, TAD, pretrained) of each seed serves all three comparisons.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Preset", "Variant", "PRESETS", "variants", "BASELINE", "is_smoke"]


@dataclass(frozen=True)
class Preset:
    """Budget and sizes of one paper run (every variant gets the same).

    ``steps`` optimiser steps of ``batch_size`` sentences of ``max_len`` tokens; ``seeds`` for the
    headline comparisons (schedule, init), ``ablation_seeds`` for LTE / PTE; validation NELBO every
    ``eval_every`` steps on ``eval_sentences`` valid sentences (the curves); test ELBO on
    ``test_sentences`` sentences with ``elbo_samples`` draws each; BLEU / Self-BLEU of
    ``bleu_samples`` samples generated with ``sample_steps`` steps (top-k 30); the best variant is
    also evaluated at each of ``sweep_steps``.
    """

    name: str
    steps: int
    seeds: tuple[int, ...] = (0, 1)
    ablation_seeds: tuple[int, ...] = (0, 1)
    data: str = "builtin"
    tokenizer: str | None = None
    init_pretrained: str = "minilm"
    init_scratch: str = "scratch"
    max_len: int = 32
    batch_size: int = 16
    lr: float = 3e-4
    warmup_steps: int = 20
    max_train_sentences: int | None = None
    eval_every: int = 25
    eval_sentences: int = 128
    test_sentences: int | None = 512
    elbo_samples: int = 2
    bleu_samples: int = 64
    sample_steps: int = 32
    sweep_steps: tuple[int, ...] = (2, 4, 8, 16, 32)
    top_k: int = 30
    jobs: int = 2
    threads: int = 1
    #: checkpoint cache subdirectory (default ``name``): presets that differ only in seeds, jobs or
    #: threads share it, so adding a seed trains only that seed's variants
    cache_name: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def train_config(self, variant: Variant, out: str) -> Any:
        """The :class:`dbert_model.TrainConfig` that trains ``variant`` under this preset into ``out``."""
        from dbert_model import DiffusionSettings, TrainConfig

        return TrainConfig(
            out=str(out), data=self.data, tokenizer=self.tokenizer,
            init=self.init_pretrained if variant.init == "pretrained" else self.init_scratch,
            diffusion=DiffusionSettings(time_design=variant.time_design, schedule=variant.schedule, max_len=self.max_len),
            batch_size=self.batch_size, lr=self.lr, warmup_steps=self.warmup_steps, max_steps=self.steps,
            eval_every=self.eval_every, eval_sentences=self.eval_sentences, save_every=self.steps,
            log_every=max(1, self.steps // 10), max_train_sentences=self.max_train_sentences, seed=variant.seed,
            device="cpu", progress=False,
        )


@dataclass(frozen=True)
class Variant:
    """One trained model: noise schedule, time design, initialisation (``pretrained``/``scratch``), seed."""

    schedule: str = "spindle"
    time_design: str = "tad"
    init: str = "pretrained"
    seed: int = 0
    groups: tuple[str, ...] = field(default=(), compare=False)

    @property
    def config_name(self) -> str:
        return f"{self.schedule}-{self.time_design}-{self.init}"

    @property
    def name(self) -> str:
        return f"{self.config_name}-s{self.seed}"


BASELINE = Variant()

PRESETS: dict[str, Preset] = {
    # CI smoke test: the real corpus and the MiniLM architecture, a handful of steps, one seed
    "quick": Preset(
        name="quick", steps=4, seeds=(0,), ablation_seeds=(0,), max_len=16, batch_size=4, warmup_steps=1,
        max_train_sentences=256, eval_every=2, eval_sentences=16, test_sentences=16, elbo_samples=1,
        bleu_samples=4, sample_steps=4, sweep_steps=(2, 4), jobs=1,
    ),
    # three seeds: ~55 minutes on an idle 2-core CPU
    "small": Preset(name="small", steps=240, seeds=(0, 1, 2), ablation_seeds=(0, 1, 2), eval_every=20),
    # the issue's ~90-minute configuration on an idle 2-core CPU
    "full": Preset(name="full", steps=720, test_sentences=None, bleu_samples=128),
}


def is_smoke(preset: Preset) -> bool:
    """Whether ``preset`` is the smoke test (``quick`` and its overrides): its models train for a
    handful of steps, so it checks that the pipeline runs and its numbers measure nothing."""
    return preset.name == "quick" or preset.name.startswith("quick-")


def variants(preset: Preset) -> list[Variant]:
    """Every variant to train, deduplicated, in the order to run them (seed 0 of all first)."""
    wanted: dict[Variant, set[str]] = {}

    def add(v: Variant, group: str) -> None:
        wanted.setdefault(v, set()).add(group)

    for seed in sorted(set(preset.seeds) | set(preset.ablation_seeds)):
        if seed in preset.seeds:
            for schedule in ("spindle", "d3pm"):
                add(Variant(schedule=schedule, seed=seed), "schedule")
            for init in ("pretrained", "scratch"):
                add(Variant(init=init, seed=seed), "init")
        if seed in preset.ablation_seeds:
            for design in ("tad", "lte", "pte"):
                add(Variant(time_design=design, seed=seed), "time")
    return [Variant(v.schedule, v.time_design, v.init, v.seed, tuple(sorted(g))) for v, g in wanted.items()]
