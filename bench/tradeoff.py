"""Speed against quality: a trained DiffusionBERT at several step counts against its GPT-2 baseline.

``python -m bench --only tradeoff --checkpoint DIR --baseline DIR --judge DIR`` takes three
checkpoints of ``dbert_model`` trained on the same corpus: the DiffusionBERT (``dbert train``),
the GPT-2 baseline (``dbert train --arch gpt2``, same size, data, order and budget) and the judge
(another GPT-2, trained separately). For every setting -- DiffusionBERT with each step count
(posterior sampler, top-k as configured) and GPT-2 with a KV cache (dynamic; static without
compilation on the CPU; static + ``torch.compile`` on a GPU) -- it

* times generation of ``seq_len - 1`` tokens after ``[CLS]`` (the canvas the models were trained
  on) at batch sizes 1 and 8, median of ``repeats`` calls after warm-up: tokens/s;
* generates ``samples`` sentences and scores them: generative perplexity under the judge,
  distinct-1/2/3 and repetition (:mod:`dbert_model.judge`), BLEU-4 against the test set and
  Self-BLEU (:mod:`dbert_model.evaluate`);

and reports each model's own test perplexity on the whole test sentences that fit in
``max_len``: GPT-2's exact one, DiffusionBERT's ELBO bound (an upper bound), both per word and
per token. The test sentences themselves, scored by the judge, give the reference generative
perplexity. The plot is tokens/s against judge perplexity, one marker per setting and batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .timing import summarize, synchronize

__all__ = ["TradeoffConfig", "config_for", "run_tradeoff", "lines", "plot"]


@dataclass(frozen=True)
class TradeoffConfig:
    """Grid of the trade-off run: DiffusionBERT step counts (posterior sampler), decoding
    strategies (``(label, at most this many calls, keyword arguments of sample_ids)``), GPT-2
    cache variants, batch sizes, quality samples (generated in batches of ``quality_batch``) and
    test sentences for the perplexities (None: all whole test sentences)."""

    steps: tuple[int, ...] = (4, 16, 64)
    strategies: tuple[tuple[str, int, dict[str, Any]], ...] = ()
    gpt_variants: tuple[str, ...] = ("kv-cache", "static")
    batches: tuple[int, ...] = (1, 8)
    top_k: int = 30
    samples: int = 16
    quality_batch: int = 16
    test_sentences: int | None = 128
    elbo_samples: int = 1
    warmup: int = 1
    repeats: int = 2


#: The adaptive decoding strategies of the trade-off (see docs/decoding.md): confidence threshold
#: (Fast-dLLM) and entropy bound (EB-sampler), each in blocks of 16 with the dual cache, and the
#: threshold alone; at most 16 denoiser calls per block-decoded sequence.
STRATEGIES: tuple[tuple[str, int, dict[str, Any]], ...] = (
    ("threshold 0.9", 64, {"strategy": "threshold", "threshold": 0.9}),
    ("threshold 0.9, blocks 16, dual cache", 16,
     {"strategy": "threshold", "threshold": 0.9, "block_length": 16, "cache": "dual"}),
    ("entropy bound 1.0, blocks 16, dual cache", 16,
     {"strategy": "entropy_bound", "gamma": 1.0, "block_length": 16, "cache": "dual"}),
)

#: The CPU grid is sized for a shared 2-core machine (about 6 minutes of one core); the GPU
#: grid gives the quality figures more samples.
_CONFIGS = {
    "cpu": TradeoffConfig(strategies=STRATEGIES, samples=64, repeats=3),
    "cuda": TradeoffConfig(steps=(4, 8, 16, 32, 64, 128), strategies=STRATEGIES,
                           gpt_variants=("kv-cache", "static-compile"), samples=512, quality_batch=128,
                           test_sentences=None, elbo_samples=4, repeats=5),
}
_QUICK = TradeoffConfig(steps=(2, 4), strategies=(("threshold 0.5, blocks 4, dual cache", 4, {
                            "strategy": "threshold", "threshold": 0.5, "block_length": 4, "cache": "dual"}),),
                        gpt_variants=("kv-cache",), batches=(1, 2), samples=4, quality_batch=4,
                        test_sentences=8, elbo_samples=1, warmup=0, repeats=1)

#: GPT-2 variant -> :func:`dbert_model.ar.sample_ar` cache (``generate`` compiles the static cache on a GPU)
_CACHES = {"kv-cache": "dynamic", "static": "static", "static-compile": "static"}


def config_for(device: str, quick: bool = False) -> TradeoffConfig:
    """The grid for ``device`` (``"cpu"``/``"cuda"``); ``quick``: a seconds-long smoke run."""
    return _QUICK if quick else _CONFIGS[device]


def _timed(fn: Callable[[], torch.Tensor], device: torch.device, warmup: int, repeats: int) -> tuple[list[float], torch.Tensor]:
    lat, out = [], None
    for i in range(warmup + repeats):
        synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(device)
        if i >= warmup:
            lat.append(time.perf_counter() - t0)
    assert out is not None
    return lat, out


def run_tradeoff(checkpoint: str, baseline: str, judge_dir: str, device: torch.device, cfg: TradeoffConfig,
                 *, backend: str = "auto", progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every setting of ``cfg`` (see the module docstring); returns the results dict."""
    from dbert_model import decode, load_checkpoint, load_corpus, sample_ids
    from dbert_model.ar import ar_perplexity, load_ar, sample_ar
    from dbert_model.checkpoint import check_vocabulary
    from dbert_model.data import encode
    from dbert_model.evaluate import bleu4, elbo_perplexity, normalise_references, self_bleu
    from dbert_model.judge import Judge

    note = progress or (lambda _: None)
    bert = load_checkpoint(checkpoint, device=device)
    gpt = load_ar(baseline, device=device)
    check_vocabulary(bert.settings, gpt.tokenizer, where=f"--baseline {baseline}")
    seq_len = bert.settings.max_len
    if int(gpt.model.config.n_positions) < seq_len:
        raise ValueError(f"--baseline {baseline} has {gpt.model.config.n_positions} positions, fewer than the "
                         f"DiffusionBERT's max_len {seq_len}: train it with --max-len {seq_len}")
    tok, st = bert.tokenizer, bert.settings
    corpus = load_corpus(_trained_on(bert.path))
    test = corpus.test[: cfg.test_sentences] if cfg.test_sentences else corpus.test
    split = encode(tok, test, seq_len)
    refs = normalise_references(tok, corpus.test, seq_len)

    from .decoding import confidence_profile

    note("confidence profile")
    profile = confidence_profile(bert, corpus.valid[:128])
    note("test perplexities")
    torch.manual_seed(0)
    perplexity = {
        "gpt2": {"bound": "exact", **ar_perplexity(gpt.model, split, st.special_ids["pad"])},
        "diffusionbert": {"bound": "ELBO (upper bound)", "elbo_samples": cfg.elbo_samples, **elbo_perplexity(
            bert.model, st, bert.token_info().to(device), split, samples=cfg.elbo_samples, backend=backend)},
    }

    calls: dict[str, list[float]] = {}  # denoiser calls per sequence of each diffusion setting's runs

    def diffusion(label: str, steps: int, options: dict[str, Any]) -> Callable[[int, int], torch.Tensor]:
        def run(n: int, seed: int) -> torch.Tensor:
            ids, stats = sample_ids(bert.model, st, tok, n=n, steps=steps, seq_len=seq_len, top_k=cfg.top_k,
                                    seed=seed, progress=False, backend=backend, return_stats=True, **options)
            calls.setdefault(label, []).append(stats.calls_per_sequence(n))
            return ids
        return run

    def autoregressive(variant: str) -> Callable[[int, int], torch.Tensor]:
        return lambda n, seed: sample_ar(gpt.model, gpt.settings, gpt.tokenizer, n=n, seq_len=seq_len,
                                         top_k=cfg.top_k, seed=seed, cache=_CACHES[variant])

    settings: list[tuple[dict[str, Any], Callable[[int, int], torch.Tensor]]] = [
        ({"model": "gpt2", "setting": f"GPT-2 {v}", "variant": v, "steps": None, "denoiser_calls": seq_len - 1},
         autoregressive(v)) for v in cfg.gpt_variants
    ] + [({"model": "diffusionbert", "setting": f"{s} steps", "variant": "posterior", "steps": s},
          diffusion(f"{s} steps", s, {})) for s in cfg.steps
    ] + [({"model": "diffusionbert", "setting": label, "variant": options.get("strategy", "posterior"), "steps": s},
          diffusion(label, s, options)) for label, s, options in cfg.strategies]
    results = []
    quality_of: dict[str, dict[str, Any]] = {}  # GPT-2 variants draw the same distribution: judged once
    for info, sample in settings:
        speed = []
        warmup = cfg.warmup + (1 if info["variant"] == "static-compile" else 0)
        for batch in cfg.batches:
            note(f"{info['setting']} batch {batch}")
            lat, out = _timed(lambda b=batch, f=sample: f(b, 0), device, warmup, cfg.repeats)
            if out.shape != (batch, seq_len):
                raise RuntimeError(f"{info['setting']} generated {tuple(out.shape)} ids, expected {(batch, seq_len)}")
            stats = summarize(lat)
            speed.append({"batch": batch, **stats.as_dict(), "tokens_per_s": batch * (seq_len - 1) / stats.median_s})
        key = info["model"] if info["model"] == "gpt2" else info["setting"]
        if key not in quality_of:
            note(f"{info['setting']} quality ({cfg.samples} samples)")
            ids = torch.cat([sample(min(cfg.quality_batch, cfg.samples - done), 1000 + done).cpu()
                             for done in range(0, cfg.samples, cfg.quality_batch)])
            texts = decode(tok, ids, st)
            if bool((ids == st.special_ids["mask"]).any()):
                raise RuntimeError(f"{info['setting']} left [MASK] tokens: benchmark invalid")
            quality_of[key] = {"bleu4": bleu4(texts, refs), "self_bleu4": self_bleu(texts), "samples": texts}
        if info["model"] == "diffusionbert":  # mean over every run of the setting (timed and quality)
            info["denoiser_calls"] = round(sum(calls[key]) / len(calls[key]), 1)
        results.append({**info, "tokens": seq_len - 1, "speed": speed, "quality": quality_of[key]})

    # the judge comes last: it is not in memory while the generations are timed
    note("judge")
    judge = Judge.load(judge_dir, device=device)
    check_vocabulary(st, judge.loaded.tokenizer, where=f"--judge {judge_dir}")
    for quality in quality_of.values():
        quality.update(judge.score(quality["samples"]))
    real = normalise_references(tok, test, seq_len)
    reference = {"setting": "test sentences", **judge.score(real), "self_bleu4": self_bleu(real)}
    return {
        "checkpoint": str(checkpoint), "baseline": str(baseline), "judge": str(judge_dir), "config": asdict(cfg),
        "data": corpus.source, "seq_len": seq_len, "test_sentences": len(test), "perplexity": perplexity,
        "confidence_profile": profile,
        "reference": reference, "training": {n: _training_summary(p) for n, p in
                                             (("diffusionbert", bert.path), ("gpt2", gpt.path), ("judge", judge.path))},
        "results": results,
    }


def _trained_on(path: Path) -> str:
    from dbert_model.checkpoint import read_trainer_state

    state = read_trainer_state(path)
    return state["config"].get("data", "builtin") if state else "builtin"


def _training_summary(path: Path) -> dict[str, Any]:
    """Steps, seed, batch, wall time and init of a checkpoint's training (from trainer_state.json)."""
    from dbert_model import TrainConfig
    from dbert_model.checkpoint import read_trainer_state

    s = read_trainer_state(path)
    if s is None:
        return {}
    c = TrainConfig.from_json(s["config"])
    elapsed = s["history"][-1]["elapsed_s"] if s["history"] else None
    return {"steps": s["step"], "arch": c.arch, "init": c.init, "seed": c.seed, "batch_size": c.batch_size,
            "max_len": c.diffusion.max_len, "lr": c.lr, "elapsed_s": elapsed}


def _f(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}g}"


def lines(t: dict[str, Any], png_name: str | None = None) -> list[str]:
    """Markdown of the trade-off section."""
    if "skipped" in t:
        return [f"Skipped: {t['skipped']}"]
    out = [f"DiffusionBERT `{t['checkpoint']}`, GPT-2 baseline `{t['baseline']}`, judge `{t['judge']}`; "
           f"data `{t['data']}`; {t['seq_len'] - 1} generated tokens after `[CLS]`; top-k {t['config']['top_k']}.", ""]
    tr = t["training"]
    out += ["Training (same corpus and data order for the seed):", "",
            "| model | arch | init | seed | steps | batch | max_len | lr | wall time |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in tr.items():
        if s:
            wall = f"{s['elapsed_s'] / 60:.0f} min" if s.get("elapsed_s") else "-"
            out.append(f"| {name} | {s['arch']} | {s['init']} | {s['seed']} | {s['steps']} | {s['batch_size']} | "
                       f"{s['max_len']} | {s['lr']:g} | {wall} |")
    p = t["perplexity"]
    out += ["", f"Test perplexity ({int(p['gpt2']['sentences'])} whole test sentences):", "",
            "| model | bound | PPL per word | PPL per token | nats per token |", "|---|---|---|---|---|"]
    for name in ("gpt2", "diffusionbert"):
        r = p[name]
        out.append(f"| {name} | {r['bound']} | {_f(r['perplexity'])} | {_f(r['perplexity_per_token'])} | "
                   f"{_f(r['nats_per_token'])} |")
    prof = t.get("confidence_profile")
    if prof:
        out += ["", f"DiffusionBERT's certainty with half of the real tokens of {prof['positions']} validation positions "
                f"masked: median top-1 probability {prof['median_top_prob']:.3f}, above 0.5 / 0.7 / 0.9: "
                f"{prof['frac_above_0.5']:.1%} / {prof['frac_above_0.7']:.1%} / {prof['frac_above_0.9']:.1%}, "
                f"argmax right {prof['argmax_accuracy']:.1%} (the adaptive strategies reveal what is above their "
                "threshold or within their entropy bound)."]
    if png_name:
        out += ["", f"![tokens/s against judge perplexity]({png_name})"]
    batches = t["config"]["batches"]
    ref = t["reference"]
    out += ["", f"Speed and sample quality ({t['config']['samples']} samples per setting; judge perplexity of the "
            f"test sentences themselves: {_f(ref['gen_ppl'])} at {ref['tokens'] / ref['texts']:.1f} tokens per "
            f"sentence, their distinct-2 {_f(ref['distinct_2'], 3)}, "
            f"Self-BLEU {_f(ref['self_bleu4'], 3)}):", "",
            "| setting | calls | " + " | ".join(f"tokens/s b={b}" for b in batches)
            + " | judge PPL | tokens / sample (empty) | distinct-1/2/3 | repetition | BLEU-4 | Self-BLEU |",
            "|---|---|" + "---|" * len(batches) + "---|---|---|---|---|---|"]
    for r in t["results"]:
        q = r["quality"]
        speeds = " | ".join(f"{s['tokens_per_s']:.0f}" for s in r["speed"])
        length = f"{q['tokens'] / q['texts']:.1f} ({q['empty']})" if "tokens" in q else "-"
        out.append(f"| {r['setting']} | {r['denoiser_calls']:g} | {speeds} | {_f(q['gen_ppl'])} | {length} | "
                   f"{q['distinct_1']:.3f} / {q['distinct_2']:.3f} / {q['distinct_3']:.3f} | {q['repetition']:.3f} | "
                   f"{q['bleu4']:.3f} | {q['self_bleu4']:.3f} |")
    out += ["", "Examples:", ""]
    shown = set()
    for r in t["results"]:
        key = r["model"] if r["model"] == "gpt2" else r["setting"]
        if key not in shown:
            shown.add(key)
            out += [f"- {r['setting']}: " + " / ".join(f"_{e}_" if e else "(empty)" for e in r["quality"]["samples"][:2])]
    return out


def plot(t: dict[str, Any], path: Path, title: str) -> bool:
    """PNG: tokens/s (x, log) against judge perplexity (y, log), one panel per batch size."""
    if "results" not in t:
        return False
    from .report import import_pyplot

    plt = import_pyplot(path.name)
    if plt is None:
        return False

    batches = t["config"]["batches"]
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 4.5), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        pts = [(next(s["tokens_per_s"] for s in r["speed"] if s["batch"] == batch), r["quality"]["gen_ppl"], r)
               for r in t["results"]]
        diffusion = [(x, y, r) for x, y, r in pts if r["model"] == "diffusionbert"]
        diff = [p for p in diffusion if p[2]["setting"] == f"{p[2]['steps']} steps"]  # the step counts
        if diff:
            ax.plot([x for x, _, _ in diff], [y for _, y, _ in diff], "o-", color="tab:blue",
                    label="DiffusionBERT, posterior")
            for x, y, r in diff:
                ax.annotate(f"{r['steps']} steps", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        others = [p for p in diffusion if p[2]["setting"] != f"{p[2]['steps']} steps"]  # the strategies
        for (x, y, r), marker in zip(others, "^v<>PX", strict=False):
            ax.plot([x], [y], marker, ms=8, color="tab:green", ls="none",
                    label=f"{r['setting']} ({r['denoiser_calls']:g} calls)")
        gpt_markers = iter("*Dsv^")
        for x, y, r in pts:
            if r["model"] == "gpt2":
                ax.plot([x], [y], next(gpt_markers, "x"), ms=12, color="tab:red", alpha=0.8, ls="none",
                        label=r["setting"])
        ax.axhline(t["reference"]["gen_ppl"], color="gray", ls="--", lw=1, label="test sentences")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens / s (higher is faster)")
        ax.set_ylabel("judge perplexity (lower is better)")
        ax.set_title(f"batch {batch}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
