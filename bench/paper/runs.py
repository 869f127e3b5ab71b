"""Training (cached) and evaluation of the paper-claims variants, one job per process.

A job trains its variant unless the cache already holds it at the preset's step count (a rerun
only evaluates; an interrupted one resumes), then measures on the test split:

* ``perplexity``: the ELBO bound per word, ``exp(NELBO / words)`` (T = 1000, as trained; the
  full bound, ``[SEP]``/``[PAD]`` included), on the test sentences that fit whole in ``max_len``
  tokens (the same sentences for every variant); ``ppl_per_wordpiece``: the real tokens' bound per
  real wordpiece (the authors' normalisation);
* ``bleu4`` / ``self_bleu4`` (pooled, smoothed) and ``bleu4_mean`` / ``self_bleu4_mean`` (the
  authors' mean of per-sample scores): ``bleu_samples`` samples generated with ``sample_steps`` steps;
* the validation curve logged during training (for the plot).

A sweep job evaluates one trained variant at a given step count ``k``: the *discretised* ELBO
(the same model as a ``k``-step diffusion, i.e. the bound of the ``k``-step sampler without
top-k, ``T = k``), and BLEU / Self-BLEU / seconds of samples generated with ``k`` steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .presets import Preset, Variant, is_smoke

__all__ = ["checkpoint_dir", "train_and_evaluate", "sweep_point", "cache_root"]


def cache_root() -> Path:
    """``~/.cache/dbert-kernels/paper`` (trained variants; not in git)."""
    from dbert_model.data import cache_dir

    return cache_dir() / "paper"


def checkpoint_dir(root: Path, preset: Preset, variant: Variant) -> Path:
    return root / (preset.cache_name or preset.name) / variant.name


def _trained_steps(out: Path) -> int:
    from dbert_model.checkpoint import read_trainer_state

    state = read_trainer_state(out)
    return int(state["step"]) if state else 0


def _test_data(preset: Preset, loaded: Any) -> tuple[Any, list[str]]:
    from dbert_model import encode, load_corpus
    from dbert_model.bench_api import whole_sentences
    from dbert_model.evaluate import normalise_references

    corpus = load_corpus(preset.data)
    sentences = corpus.test or corpus.valid
    max_len = loaded.settings.max_len
    refs = normalise_references(loaded.tokenizer, sentences, max_len)
    # the ELBO only on sentences that fit whole: a truncated one would be scored per word of the full text
    return encode(loaded.tokenizer, whole_sentences(loaded.tokenizer, sentences, max_len), max_len), refs


def _elbo(preset: Preset, loaded: Any, split: Any, steps: int | None = None) -> dict[str, float]:
    from dbert_model import elbo_perplexity
    from dbert_model.evaluate import discretised

    model, settings = loaded.model, loaded.settings
    if steps is not None:
        model, settings = discretised(loaded.model, settings, steps)
    return elbo_perplexity(model, settings, loaded.token_info(), split, samples=preset.elbo_samples,
                           batch_size=64, seed=0, max_sentences=preset.test_sentences)


def _samples(preset: Preset, loaded: Any, refs: list[str], steps: int) -> dict[str, Any]:
    from dbert_model import bleu4, decode, sample_ids, self_bleu
    from dbert_model.evaluate import bleu4_mean, self_bleu_mean

    start = time.perf_counter()
    ids = sample_ids(loaded.model, loaded.settings, loaded.tokenizer, n=preset.bleu_samples, steps=steps,
                     top_k=preset.top_k, seed=0, progress=False)
    seconds = time.perf_counter() - start
    texts = decode(loaded.tokenizer, ids, loaded.settings)
    nonempty = sum(bool(t.split()) for t in texts)
    try:
        scores = {"bleu4": bleu4(texts, refs), "self_bleu4": self_bleu(texts),
                  "bleu4_mean": bleu4_mean(texts, refs), "self_bleu4_mean": self_bleu_mean(texts)}
    except ValueError:  # (almost) all samples empty: an untrained model writes [SEP] first
        scores = {k: float("nan") for k in ("bleu4", "self_bleu4", "bleu4_mean", "self_bleu4_mean")}
    return {**scores, "sample_seconds": seconds, "nonempty_samples": nonempty, "examples": texts[:3]}


def train_and_evaluate(preset: Preset, variant: Variant, root: str) -> dict[str, Any]:
    """Train ``variant`` (unless cached at ``preset.steps``) and evaluate it; a JSON-able dict."""
    from dbert_model import load_checkpoint, train

    torch.set_num_threads(preset.threads)
    out = checkpoint_dir(Path(root), preset, variant)
    trained_here = _trained_steps(out) < preset.steps
    train_seconds = None
    if trained_here:
        start = time.perf_counter()
        train(preset.train_config(variant, str(out)), log=_train_log(preset, variant))
        train_seconds = time.perf_counter() - start
    loaded = load_checkpoint(out, device="cpu")
    state = json.loads((loaded.path / "trainer_state.json").read_text())
    split, refs = _test_data(preset, loaded)
    start = time.perf_counter()
    elbo = _elbo(preset, loaded, split)
    samples = _samples(preset, loaded, refs, preset.sample_steps)
    result = {
        "variant": variant.name, "config": variant.config_name, "schedule": variant.schedule,
        "time_design": variant.time_design, "init": variant.init, "seed": variant.seed,
        "groups": list(variant.groups), "steps": state["step"], "checkpoint": str(out),
        "trained_now": trained_here, "train_seconds": train_seconds,
        "train_seconds_logged": state["history"][-1]["elapsed_s"] if state["history"] else None,
        "perplexity": elbo["perplexity"], "nats_per_word": elbo["nats_per_word"],
        "ppl_per_wordpiece": elbo["ppl_per_wordpiece"], "nats_per_wordpiece": elbo["nats_per_wordpiece"],
        "nelbo_real_per_sentence": elbo["nelbo_real_per_sentence"],
        "test_sentences": elbo["sentences"], **samples,
        "eval_seconds": time.perf_counter() - start,
        "validation": [{"step": v["step"], "nats_per_word": v["nats_per_word"]} for v in state["validation"]],
    }
    if is_smoke(preset):
        print(f"[{variant.name}] trained and evaluated (smoke run: no numbers)", flush=True)
    else:
        print(f"[{variant.name}] PPL <= {result['perplexity']:.1f}  BLEU-4 {result['bleu4']:.4f}  "
              f"Self-BLEU {result['self_bleu4']:.4f}", flush=True)
    return result


def _train_log(preset: Preset, variant: Variant) -> Callable[[str], None]:
    """The training log of ``variant``, each line prefixed with its name; a smoke run leaves out the
    validation lines (the perplexity bound of a model trained for a handful of steps means nothing)."""
    def log(line: str) -> None:
        if not (is_smoke(preset) and line.lstrip().startswith("valid @")):
            print(f"[{variant.name}] {line}", flush=True)

    return log


def sweep_point(preset: Preset, variant: Variant, root: str, steps: int) -> dict[str, Any]:
    """Evaluate the trained ``variant`` as a ``steps``-step model (discretised ELBO + samples)."""
    from dbert_model import load_checkpoint

    torch.set_num_threads(preset.threads)
    loaded = load_checkpoint(checkpoint_dir(Path(root), preset, variant), device="cpu")
    split, refs = _test_data(preset, loaded)
    elbo = _elbo(preset, loaded, split, steps=steps)
    samples = _samples(preset, loaded, refs, steps)
    if is_smoke(preset):
        print(f"[{variant.name} @ {steps} steps] evaluated (smoke run: no numbers)", flush=True)
    else:
        print(f"[{variant.name} @ {steps} steps] PPL <= {elbo['perplexity']:.1f}  BLEU-4 {samples['bleu4']:.4f}",
              flush=True)
    return {"variant": variant.name, "seed": variant.seed, "sampling_steps": steps,
            "perplexity": elbo["perplexity"], "nats_per_word": elbo["nats_per_word"],
            "ppl_per_wordpiece": elbo["ppl_per_wordpiece"], **samples}
