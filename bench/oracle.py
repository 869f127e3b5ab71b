"""``python -m bench --only oracle``: every decoding setting of ``generate`` on an exact denoiser.

The data is a known Markov chain and the denoiser its exact posterior
(:class:`dbert_kernels.markov.OracleDenoiser`), so the error measured is the sampler's alone
(Tang et al., arXiv 2602.19619). For each length, every setting (posterior and top-k at a range of
steps, threshold, entropy bound, with and without blocks) generates the same number of sequences;
each row reports the denoiser calls per sequence and the metrics of
:func:`dbert_kernels.markov.sampler_metrics` against their exact values. Two reference rows: the
**exact** sampler (one token per step, revealed in an order that does not depend on the draw:
``topk`` at ``steps = L`` with ``confidence="margin"``; its error is zero in distribution, so its
row is the floor that sampling noise alone gives), and the chain's own samples of the same size.

Writes ``oracle_<device>.json`` / ``.md`` (and ``.png`` when matplotlib imports) into ``--out``.
"""

from __future__ import annotations

import json
import math
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import dbert_kernels as dk
from dbert_kernels.markov import MarkovChain, OracleDenoiser, sampler_metrics

from . import report

__all__ = ["OracleConfig", "config_for", "settings", "strategy_grid", "run_oracle", "markdown", "main"]


@dataclass(frozen=True)
class OracleConfig:
    """The language and the grid of one oracle run."""

    vocab: int = 256
    zipf: float = 1.0
    sparsity: float = 0.5
    chain_seed: int = 0
    lengths: tuple[int, ...] = (64, 128)
    samples: tuple[int, ...] = (128, 64)  # sequences per setting, one entry per length
    steps: tuple[int, ...] = (4, 8, 16, 32)  # plus L
    thresholds: tuple[float, ...] = (0.5, 0.7, 0.9)
    gammas: tuple[float, ...] = (0.1, 1.0, 10.0)
    block_length: int = 16
    seed: int = 1


FULL = OracleConfig()
QUICK = OracleConfig(vocab=32, lengths=(16,), samples=(16,), steps=(2, 4), thresholds=(0.5, 0.9), gammas=(1.0,),
                     block_length=8)


def config_for(quick: bool = False) -> OracleConfig:
    return QUICK if quick else FULL


def strategy_grid(steps: tuple[int, ...], thresholds: tuple[float, ...], gammas: tuple[float, ...], free: int,
                  block_length: int) -> list[dict[str, Any]]:
    """The decoding grid of both oracle benchmarks, without blocks and then with blocks of
    ``block_length``: the posterior and top-k at each of ``steps`` and ``free`` steps, the threshold
    strategy at each of ``thresholds`` and the entropy bound at each of ``gammas``, those two with
    ``free`` steps as the bound (``strategy`` / ``setting`` / ``block`` label each, ``gen`` holds the
    ``generate`` keywords)."""
    out: list[dict[str, Any]] = []
    for block in (None, block_length):
        for name in ("posterior", "topk"):
            for s in sorted({*steps, free}):
                out.append(dict(strategy=name, setting=f"steps={s}", block=block, gen=dict(strategy=name, steps=s)))
        for tau in thresholds:
            out.append(dict(strategy="threshold", setting=f"threshold={tau}", block=block,
                            gen=dict(strategy="threshold", threshold=tau, steps=free)))
        for g in gammas:
            out.append(dict(strategy="entropy_bound", setting=f"gamma={g}", block=block,
                            gen=dict(strategy="entropy_bound", gamma=g, steps=free)))
    return out


def settings(cfg: OracleConfig, length: int) -> list[dict[str, Any]]:
    """The ``generate`` keyword sets of one length (``strategy`` / ``setting`` label each)."""
    exact = dict(strategy="exact", setting="1 token/step, margin order",
                 gen=dict(strategy="topk", steps=length, confidence="margin"))
    return [exact, *strategy_grid(cfg.steps, cfg.thresholds, cfg.gammas, length, cfg.block_length)]



def run_oracle(cfg: OracleConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the grid; returns the ``oracle`` section of the results (JSON-ready)."""
    chain = MarkovChain.random(cfg.vocab, seed=cfg.chain_seed, zipf=cfg.zipf, sparsity=cfg.sparsity)
    section: dict[str, Any] = {
        "chain": {"vocab": cfg.vocab, "zipf": cfg.zipf, "sparsity": cfg.sparsity, "seed": cfg.chain_seed,
                  "zero_transitions": float((chain.trans == 0).double().mean())},
        "lengths": [],
    }
    for length, n in zip(cfg.lengths, cfg.samples, strict=True):
        block_res: dict[str, Any] = {"length": length, "samples": n, "entropy_rate": chain.entropy_rate(length),
                                     "rows": [], "skipped": []}
        section["lengths"].append(block_res)
        t0 = time.perf_counter()
        truth = sampler_metrics(chain, chain.sample(n, length, seed=cfg.seed + 1000))
        block_res["rows"].append({"strategy": "chain samples", "setting": "drawn from the chain", "block_length": None,
                                  "steps": None, "calls_per_sequence": None,
                                  "seconds": round(time.perf_counter() - t0, 3), **report.json_floats(truth)})
        for s in settings(cfg, length):
            gen = dict(s["gen"])
            block = s.get("block")
            label = f"L={length} {s['strategy']} {s['setting']}" + (f" block={block}" if block else "")
            if block is not None and gen["steps"] < math.ceil(length / block):
                block_res["skipped"].append(f"{label}: steps < the {math.ceil(length / block)} blocks")
                continue
            if progress is not None:
                progress(label)
            oracle = OracleDenoiser(chain)
            t0 = time.perf_counter()
            ids, stats = dk.generate(oracle, mask_id=oracle.mask_id, batch_size=n, seq_len=length, banned_ids=[],
                                     block_length=block, seed=cfg.seed, progress=False, return_stats=True, **gen)
            seconds = time.perf_counter() - t0
            m = sampler_metrics(chain, ids)
            block_res["rows"].append({
                "strategy": s["strategy"], "setting": s["setting"], "block_length": block, "steps": gen["steps"],
                "calls_per_sequence": stats.calls_per_sequence(n), "denoiser_calls": stats.calls,
                "inconsistent_rows": oracle.inconsistent, "seconds": round(seconds, 3), **report.json_floats(m),
            })
    return section



def _exact_like(r: dict[str, Any]) -> str:
    """'yes' when the row is within sampling error of exact on the sharp metrics (|NLL gap| <= 3 SE,
    no impossible transition)."""
    se, gap = r.get("nll_se"), r.get("nll_gap")
    if se is None or gap is None:
        return "-"
    return "yes" if abs(r["nll_gap"]) <= 3 * se and r.get("impossible_transition_rate", 0) == 0 else "no"


def markdown(res: dict[str, Any]) -> str:
    sec = res["oracle"]
    ch = sec["chain"]
    lines = [
        "# Sampler error on an exact denoiser (oracle)", "",
        f"`{res['command']}` — {res['started']}, {res['environment']['device_name']}, "
        f"{res['duration_s']:.0f} s, load average before {res['loadavg_before']} / after {res['loadavg_after']}.", "",
        f"Language: Markov chain, V = {ch['vocab']}, Zipf exponent {ch['zipf']}, sparsity {ch['sparsity']} "
        f"({100 * ch['zero_transitions']:.1f}% of transitions impossible), seed {ch['seed']}. Denoiser: the exact "
        "posterior of every masked position given the visible tokens, so every error below is the sampler's. "
        "Samples per setting: " + ", ".join(f"{b['samples']} at L = {b['length']}" for b in sec["lengths"])
        + " (sized for a few CPU minutes; the NLL column carries its standard error, and the bigram TV has "
        "a sampling floor: compare with the two reference rows).", "",
        "Columns: calls/seq = denoiser calls per sequence; NLL gap = NLL per token under the chain minus the exact "
        "entropy rate (impossible tokens left out; < 0: too likely, mode-seeking; > 0: too unlikely); impossible = "
        "sequences with a zero-probability transition / zero-probability transitions per transition; TV = total "
        "variation of the bigram frequencies from the exact bigram marginals; d-n = distinct-n; exact? = NLL gap "
        "within 3 SE of 0 and no impossible transition.", "",
    ]
    for b in sec["lengths"]:
        lines += [f"## L = {b['length']} (entropy rate {b['entropy_rate']:.4f} nats/token)", "",
                  "| sampler | setting | block | calls/seq | NLL gap ± SE | impossible seq % | impossible trans % "
                  "| bigram TV | d-1 | d-2 | d-3 | d-4 | exact? | s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in b["rows"]:
            lines.append(
                f"| {r['strategy']} | {r['setting']} | {r['block_length'] or '-'} | {report.fmt(r['calls_per_sequence'], '.1f')} "
                f"| {report.fmt(r['nll_gap'], '+.3f')} ± {report.fmt(r['nll_se'], '.3f')} "
                f"| {report.fmt(100 * r['impossible_seq_rate'], '.1f')} | {report.fmt(100 * r['impossible_transition_rate'], '.2f')} "
                f"| {report.fmt(r['bigram_tv'])} | {report.fmt(r['distinct_1'])} | {report.fmt(r['distinct_2'])} "
                f"| {report.fmt(r['distinct_3'])} | {report.fmt(r['distinct_4'])} | {_exact_like(r)} | {report.fmt(r['seconds'], '.1f')} |")
        if b["skipped"]:
            lines += ["", "Not run: " + "; ".join(b["skipped"]) + "."]
        lines.append("")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> bool:
    """NLL gap against calls per sequence, one panel per length (only where matplotlib imports)."""
    plt = report.import_pyplot("the oracle plot")
    if plt is None:
        return False
    blocks = res["oracle"]["lengths"]
    fig, axes = plt.subplots(1, len(blocks), figsize=(6 * len(blocks), 4), squeeze=False)
    for ax, b in zip(axes[0], blocks, strict=True):
        groups: dict[str, list[tuple[float, float]]] = {}
        for r in b["rows"]:
            if r["calls_per_sequence"] is None or r["nll_gap"] is None:
                continue
            key = r["strategy"] + (f" block {r['block_length']}" if r["block_length"] else "")
            groups.setdefault(key, []).append((r["calls_per_sequence"], r["nll_gap"]))
        for key, pts in groups.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("denoiser calls per sequence")
        ax.set_ylabel("NLL per token - entropy rate (nats)")
        ax.set_title(f"L = {b['length']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True



def main(argv: list[str], out_dir: Path, quick: bool, progress: bool = True) -> dict[str, Any]:
    """Run the oracle table and write ``oracle_cpu.{json,md}`` (+ png) into ``out_dir``."""
    cfg = config_for(quick)
    device = torch.device("cpu")  # the oracle runs on the CPU in float64
    res: dict[str, Any] = {
        "schema": 1, "mode": "quick" if quick else "full", "command": "python -m bench " + shlex.join(argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "loadavg_before": report.load_average(),
        "environment": report.environment(device), "config": {"oracle": asdict(cfg)},
    }
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(len(settings(cfg, n)) for n in cfg.lengths), desc="oracle", unit="setting")
        except ImportError:
            bar = None

    def tick(label: str) -> None:
        if bar is not None:
            bar.set_postfix_str(label)
            bar.update(1)

    t0 = time.perf_counter()
    try:
        res["oracle"] = run_oracle(cfg, tick)
    finally:
        if bar is not None:
            bar.close()
    res["duration_s"] = time.perf_counter() - t0
    res["loadavg_after"] = report.load_average()
    res["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"oracle_{device.type}"
    report.write_atomic(out_dir / f"{tag}.json", json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    if plot(res, out_dir / f"{tag}.png"):
        md += f"\n![NLL gap against calls per sequence]({tag}.png)\n"
    report.write_atomic(out_dir / f"{tag}.md", md)
    report.write_index(out_dir)
    print(md)
    return res
