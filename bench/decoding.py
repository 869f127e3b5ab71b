"""Decoding strategies against GPT-2 with a KV cache: denoiser calls, tokens/s, text statistics.

``python -m bench.decoding --model CHECKPOINT`` (CPU, one thread unless ``--threads``;
``--device cuda`` for the GPU run): for a
trained DiffusionBERT checkpoint, reports

* its confidence profile (at 50 % of the real tokens masked: the most likely token's
  probability, how often it is above 0.5 / 0.7 / 0.9, how often the argmax is right);
* per decoding setting and per (batch, length): denoiser calls per sequence, tokens/s, and the
  ratio to a GPT-2 of the same size (layers, hidden, heads, vocabulary) generating the same
  number of tokens with its KV cache, timed in the same run, interleaved (each repeat runs GPT-2
  and every setting once, so that load changes hit all alike), with the share of the time spent
  in the network;
* text statistics of the batch-8, length-64 samples: distinct-1/2 and the 4-gram repetition
  rate; with ``--judge`` (a causal LM directory sharing the tokenizer) their perplexity under it.

The GPT-2 has random weights unless ``--gpt`` names a trained one (its speed does not depend on
its weights; it always generates exactly ``length`` tokens). Results: ``--out`` (md + json).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dbert_kernels.threads import available_cores, load_average

from .e2e import TimedDenoiser
from .report import native_info
from .timing import synchronize

__all__ = ["Setting", "SETTINGS", "confidence_profile", "text_stats", "judge_perplexity", "run", "main"]

#: Without ``--out`` results go to the git-ignored runs/bench/, never over the committed bench/results/.
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "runs" / "bench" / "decoding_cpu"


@dataclass(frozen=True)
class Setting:
    """One decoding configuration (keyword arguments of ``dbert_model.sample_ids``)."""

    name: str
    steps: int | None  # None: the sequence length (an upper bound for adaptive strategies)
    options: dict[str, Any] = field(default_factory=dict)


SETTINGS = (
    Setting("posterior 64 steps (spindle, per-token)", 64),
    Setting("posterior 64 steps", 64, dict(sentence_level=True)),
    Setting("posterior 16 steps", 16, dict(sentence_level=True)),
    Setting("threshold 0.9", None, dict(strategy="threshold", threshold=0.9)),
    Setting("threshold 0.9, <= 16 calls", 16, dict(strategy="threshold", threshold=0.9)),
    Setting("threshold 0.9, <= 16 calls, blocks 16, dual cache", 16,
            dict(strategy="threshold", threshold=0.9, block_length=16, cache="dual")),
    Setting("threshold 0.9, <= 16 calls, blocks 16, prefix cache", 16,
            dict(strategy="threshold", threshold=0.9, block_length=16, cache="prefix")),
    Setting("threshold 0.9, <= 16 calls, blocks 16, dual cache, early stop", 16,
            dict(strategy="threshold", threshold=0.9, block_length=16, cache="dual", early_stop=True)),
    Setting("posterior 16 steps, blocks 16, dual cache", 16, dict(sentence_level=True, block_length=16, cache="dual")),
)
ENTROPY_SETTINGS = (
    Setting("entropy_bound 1.0, <= 16 calls", 16, dict(strategy="entropy_bound", gamma=1.0)),
    Setting("entropy_bound 1.0, <= 16 calls, blocks 16, dual cache", 16,
            dict(strategy="entropy_bound", gamma=1.0, block_length=16, cache="dual")),
)


class _Timed(TimedDenoiser):
    """The bench's timed denoiser, passing the block cache through."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner, inner.device)
        self.supports_cache = inner.supports_cache
        self.device = inner.device

    def cached_logits(self, ids, t, rows, cache, batch_rows):  # type: ignore[no-untyped-def]
        with self.watch:
            return self.inner.cached_logits(ids, t, rows, cache, batch_rows)


@torch.no_grad()
def confidence_profile(loaded: Any, sentences: list[str], *, seed: int = 0) -> dict[str, float]:
    """The model's certainty at 50 % of the real tokens masked (time T/2), on ``sentences``."""
    from dbert_model import encode

    split = encode(loaded.tokenizer, sentences, loaded.settings.max_len)
    ids = split.ids if hasattr(split, "ids") else split[0]
    sp = loaded.settings.special_ids
    real = ~torch.isin(ids, torch.tensor([sp["cls"], sp["sep"], sp["pad"]]))
    gen = torch.Generator().manual_seed(seed)
    masked = real & (torch.rand(ids.shape, generator=gen) < 0.5)
    noised = ids.masked_fill(masked, sp["mask"])
    t = torch.full((ids.shape[0],), loaded.settings.T / 2)
    device = loaded.model.device
    logits = loaded.model(noised.to(device), t=t.to(device), rows=masked.to(device)).cpu()
    probs = torch.softmax(logits.float(), dim=-1)
    top = probs.max(dim=-1)
    return {
        "positions": int(masked.sum()),
        "median_top_prob": float(top.values.median()),
        "frac_above_0.5": float((top.values > 0.5).float().mean()),
        "frac_above_0.7": float((top.values > 0.7).float().mean()),
        "frac_above_0.9": float((top.values > 0.9).float().mean()),
        "argmax_accuracy": float((top.indices == ids[masked]).float().mean()),
    }


def text_stats(texts: list[str]) -> dict[str, float]:
    """distinct-1 / distinct-2 (unique over all n-grams, pooled) and the 4-gram repetition rate
    (per text, the share of 4-grams seen earlier in the same text, averaged)."""
    words = [t.split() for t in texts]
    out: dict[str, float] = {}
    for n in (1, 2):
        grams = [tuple(w[i:i + n]) for w in words for i in range(len(w) - n + 1)]
        out[f"distinct_{n}"] = len(set(grams)) / max(1, len(grams))
    reps = []
    for w in words:
        grams = [tuple(w[i:i + 4]) for i in range(len(w) - 3)]
        if grams:
            reps.append(1.0 - len(set(grams)) / len(grams))
    out["rep_4"] = statistics.fmean(reps) if reps else 0.0
    out["mean_words"] = statistics.fmean(len(w) for w in words) if words else 0.0
    return out


@torch.no_grad()
def judge_perplexity(judge_dir: str, tokenizer: Any, texts: list[str]) -> float:
    """Perplexity of ``texts`` under a causal LM (per token, pooled)."""
    from transformers import AutoModelForCausalLM

    judge = AutoModelForCausalLM.from_pretrained(judge_dir, local_files_only=True).eval()
    nll, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        if ids.shape[1] < 2:
            continue
        out = judge(input_ids=ids, labels=ids)
        nll += float(out.loss) * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    return math.exp(nll / max(1, count))


def build_gpt(loaded: Any, length: int, gpt_dir: str | None) -> Any:
    """GPT-2 of the checkpoint's size (random weights) or the trained one in ``gpt_dir``."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    if gpt_dir:
        return AutoModelForCausalLM.from_pretrained(gpt_dir, local_files_only=True).eval()
    cfg = loaded.model.config
    torch.manual_seed(0)
    conf = GPT2Config(vocab_size=cfg.vocab_size, n_positions=max(1024, length + 1), n_embd=cfg.hidden_size,
                      n_layer=cfg.num_hidden_layers, n_head=cfg.num_attention_heads,
                      bos_token_id=loaded.settings.special_ids["cls"], eos_token_id=loaded.settings.special_ids["sep"])
    return GPT2LMHeadModel(conf).eval()


def _gpt_runner(gpt: Any, batch: int, length: int, device: torch.device) -> Any:
    from transformers import GenerationConfig

    eos = gpt.config.eos_token_id if gpt.config.eos_token_id is not None else 0
    gen_cfg = GenerationConfig(do_sample=True, top_k=30, max_new_tokens=length, min_new_tokens=length,
                               pad_token_id=eos, eos_token_id=eos, bos_token_id=eos)
    prompt = torch.full((batch, 1), eos, dtype=torch.long, device=device)

    def run() -> float:
        synchronize(device)
        t0 = time.perf_counter()
        out = gpt.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=gen_cfg)
        synchronize(device)
        if out.shape != (batch, length + 1):
            raise RuntimeError(f"GPT-2 generated {tuple(out.shape)}, expected {(batch, length + 1)}")
        return time.perf_counter() - t0

    return run


@torch.no_grad()
def run(args: argparse.Namespace) -> dict[str, Any]:
    from dbert_model import decode, load_checkpoint, sample_ids
    from dbert_model.data import load_corpus

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.model, device=device)
    model = loaded.model.eval()
    info = loaded.token_info().to(device)
    corpus = load_corpus(args.data or "builtin")
    profile = confidence_profile(loaded, corpus.valid[: args.profile_sentences])
    print(f"confidence profile: {profile}", file=sys.stderr)
    settings = list(SETTINGS) + list(ENTROPY_SETTINGS)
    if args.settings:
        settings = [s for s in settings if any(key.strip() and key.strip() == s.name for key in args.settings.split(";"))]
    timed = _Timed(model)
    sizes = [(b, n) for b in args.batches for n in args.lengths]
    results: dict[str, Any] = {"profile": profile, "runs": [], "texts": {}}
    for batch, length in sizes:
        gpt = build_gpt(loaded, length, args.gpt).to(device)
        run_gpt = _gpt_runner(gpt, batch, length, device)
        run_gpt()  # warm-up

        def run_setting(setting: Setting, seed: int, batch: int = batch, length: int = length) -> tuple[float, float, Any, Any]:
            timed.watch.reset()
            opts = dict(setting.options)
            strategy = opts.pop("strategy", "posterior")
            spindle_info = None if opts.pop("sentence_level", False) else info
            synchronize(device)
            t0 = time.perf_counter()
            ids, stats = sample_ids(
                timed, loaded.settings, loaded.tokenizer, n=batch, steps=setting.steps or length, seq_len=length,
                strategy=strategy, top_k=30, token_info=spindle_info, seed=seed, progress=False, return_stats=True, **opts,
            )
            synchronize(device)
            elapsed = time.perf_counter() - t0
            if bool((ids == loaded.settings.special_ids["mask"]).any()):
                raise RuntimeError("generation left [MASK] tokens: benchmark invalid")
            return elapsed, timed.watch.total_s(), ids, stats

        run_setting(settings[-1], 10_000)  # warm-up (and the native build)
        gpt_s: list[float] = []
        per: dict[str, list[tuple[float, float, Any]]] = {s.name: [] for s in settings}
        last_ids: dict[str, Any] = {}
        for rep in range(args.repeats):
            gpt_s.append(run_gpt())
            for setting in settings:
                elapsed, model_s, ids, stats = run_setting(setting, rep)
                per[setting.name].append((elapsed, model_s, stats))
                last_ids[setting.name] = ids
        gpt_med = statistics.median(gpt_s)
        tokens = batch * length
        results["runs"].append({"batch": batch, "length": length, "strategy": "GPT-2 KV cache", "calls_per_seq": length,
                                "seconds": gpt_med, "tokens_per_s": tokens / gpt_med, "vs_gpt2": 1.0,
                                "model_share": None})
        for setting in settings:
            rows = per[setting.name]
            med = statistics.median(r[0] for r in rows)
            model_med = statistics.median(r[1] / r[0] for r in rows)
            calls = statistics.fmean(r[2].calls_per_sequence(batch) for r in rows)
            stopped = statistics.fmean(r[2].early_stopped_rows for r in rows)
            results["runs"].append({
                "batch": batch, "length": length, "strategy": setting.name, "calls_per_seq": calls,
                "seconds": med, "tokens_per_s": tokens / med, "vs_gpt2": gpt_med / med, "model_share": model_med,
                "early_stopped_rows": stopped,
            })
            if (batch, length) == (max(args.batches), min(args.lengths)):
                results["texts_of"] = [batch, length]
                results["texts"][setting.name] = decode(loaded.tokenizer, last_ids[setting.name], loaded.settings)
        print(f"batch {batch} length {length}: GPT-2 {tokens / gpt_med:.0f} tok/s", file=sys.stderr)
    results["quality"] = {name: text_stats(texts) for name, texts in results["texts"].items()}
    if args.judge:
        for name, texts in results["texts"].items():
            results["quality"][name]["judge_ppl"] = judge_perplexity(args.judge, loaded.tokenizer, texts)
    return results


def _load_line(meta: dict[str, Any]) -> str:
    """The machine's load average around the run (1-minute value), marked when it exceeded the cores."""
    before, after, cores = meta.get("load_before"), meta.get("load_after"), meta.get("cores")
    if before is None or after is None:
        return "Load average: not recorded."
    busy = max(before, after) > (cores or 1)
    return (f"Load average {before:.2f} before, {after:.2f} after, on {cores} cores"
            + (": **above the core count, ratios unreliable**." if busy else ".")
            + (f" Native kernels: {meta['native']}." if meta.get("native") else ""))


def to_markdown(res: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"# Decoding strategies vs GPT-2 (KV cache), {meta['machine']}", "",
             f"Command: `{meta['command']}`  ", f"Checkpoint: `{meta['model']}` ({meta['checkpoint_steps']} steps); "
             f"threads: {meta['threads']}; repeats: {meta['repeats']} (medians); {meta['date']}  ",
             _load_line(meta), "",
             "## Confidence profile (50 % of real tokens masked)", ""]
    p = res["profile"]
    lines += [f"median top-1 probability {p['median_top_prob']:.3f}; above 0.5: {p['frac_above_0.5']:.1%}, above 0.7: "
              f"{p['frac_above_0.7']:.1%}, above 0.9: {p['frac_above_0.9']:.1%}; argmax right: "
              f"{p['argmax_accuracy']:.1%} ({p['positions']} positions)", ""]
    lines += ["## Speed", "", "| batch | length | setting | calls / seq | tokens/s | vs GPT-2 | network share |",
              "|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        share = "" if r["model_share"] is None else f"{r['model_share']:.0%}"
        lines.append(f"| {r['batch']} | {r['length']} | {r['strategy']} | {r['calls_per_seq']:.1f} | "
                     f"{r['tokens_per_s']:.0f} | {r['vs_gpt2']:.2f}x | {share} |")
    batch, length = res.get("texts_of", ["?", "?"])
    lines += ["", f"## Text statistics (batch {batch}, length {length} samples)", "",
              "| setting | distinct-1 | distinct-2 | rep-4 | words | judge PPL |", "|---|---|---|---|---|---|"]
    for name, q in res["quality"].items():
        judge = f"{q['judge_ppl']:.1f}" if "judge_ppl" in q else "owed"
        lines.append(f"| {name} | {q['distinct_1']:.3f} | {q['distinct_2']:.3f} | {q['rep_4']:.3f} | "
                     f"{q['mean_words']:.1f} | {judge} |")
    lines += ["", "## Samples (first two per setting)", ""]
    for name, texts in res["texts"].items():
        lines.append(f"- **{name}**: " + " / ".join(f"`{t[:120]}`" for t in texts[:2]))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.decoding", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="DiffusionBERT checkpoint directory")
    p.add_argument("--data", default=None, help="corpus of the confidence profile (default: builtin)")
    p.add_argument("--gpt", default=None, help="trained GPT-2 directory (default: random weights, same size)")
    p.add_argument("--judge", default=None, help="causal LM directory for the judge perplexity")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the GPU run: same tables)")
    p.add_argument("--profile-sentences", type=int, default=128)
    p.add_argument("--settings", default=None, help="semicolon-separated setting names to run (default: all)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results path without extension (.md and .json)")
    args = p.parse_args(argv)
    started = time.time()
    load_before = load_average()
    res = run(args)
    load_after = load_average()
    from dbert_model.checkpoint import read_trainer_state

    trainer_state = read_trainer_state(Path(args.model))
    meta = {
        "command": "python -m bench.decoding " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "machine": (torch.cuda.get_device_name() if args.device.startswith("cuda")
                    else f"{platform.processor() or platform.machine()} CPU") + f", torch {torch.__version__}",
        "model": args.model, "threads": args.threads, "repeats": args.repeats,
        "checkpoint_steps": (trainer_state or {}).get("step", "?"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "wall_s": time.time() - started,
        "cores": available_cores(), "load_before": load_before, "load_after": load_after,
        "native": native_info() if not args.device.startswith("cuda") else None,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, **res}, indent=1))
    out.with_suffix(".md").write_text(to_markdown(res, meta))
    print(to_markdown(res, meta))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

