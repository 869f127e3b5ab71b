"""Tables (the paper's layout), verdicts on the four claims, the validation-curve plot, JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean
from typing import Any

__all__ = ["verdicts", "markdown", "plot_curves", "write"]

LABELS = {
    "d3pm-tad-pretrained": "D3PM schedule (TAD, MiniLM init)",
    "spindle-tad-pretrained": "DiffusionBERT: spindle, TAD, MiniLM init",
    "spindle-lte-pretrained": "spindle, LTE (layer-wise time emb.), MiniLM init",
    "spindle-pte-pretrained": "spindle, PTE (prefix time token), MiniLM init",
    "spindle-tad-scratch": "spindle, TAD, from scratch (same architecture)",
}
BASE = "spindle-tad-pretrained"


def _by_config(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        out.setdefault(r["config"], []).append(r)
    return out


def _fmt(values: list[float], digits: str) -> str:
    ok = [v for v in values if not math.isnan(v)]
    if not ok:
        return "n/a"
    text = format(mean(ok), digits)
    return text if len(values) == 1 else f"{text} ({' / '.join(format(v, digits) for v in values)})"


def _compare(better: list[dict[str, Any]], worse: list[dict[str, Any]], key: str = "perplexity") -> dict[str, Any]:
    """Is ``better`` lower than ``worse`` on ``key``? Per shared seed and on the mean."""
    b = {r["seed"]: r[key] for r in better}
    w = {r["seed"]: r[key] for r in worse}
    seeds = sorted(set(b) & set(w))
    diffs = [w[s] - b[s] for s in seeds]  # > 0: the claim's side is better
    spread = max((max(v) - min(v) for v in ([r[key] for r in better], [r[key] for r in worse]) if len(v) > 1),
                 default=None)
    if not diffs:
        return {"verdict": "not measured", "seeds": []}
    if all(d > 0 for d in diffs):
        verdict = "held" if len(diffs) > 1 else "held (one seed)"
    elif all(d < 0 for d in diffs):
        verdict = "did not hold" if len(diffs) > 1 else "did not hold (one seed)"
    else:
        verdict = "inconclusive (seeds disagree)"
    mb, mw = mean(b[s] for s in seeds), mean(w[s] for s in seeds)
    # beyond the seed spread: every paired difference larger than either configuration's spread
    beyond = None if spread is None else all(abs(d) > spread for d in diffs) and verdict.startswith(("held", "did not"))
    return {"verdict": verdict, "seeds": seeds, "claimed_better": mb, "other": mw,
            "difference": mw - mb, "relative": (mw - mb) / mw, "seed_spread": spread, "beyond_spread": beyond}


def _curve(run: dict[str, Any]) -> dict[int, float]:
    return {v["step"]: v["nats_per_word"] for v in run["validation"]}


def _convergence(pre: list[dict[str, Any]], scratch: list[dict[str, Any]]) -> dict[str, Any]:
    """Pretrained vs scratch: validation nats/word at every shared evaluation step, per seed."""
    per_seed = []
    for p in pre:
        s = next((r for r in scratch if r["seed"] == p["seed"]), None)
        if s is None:
            continue
        cp, cs = _curve(p), _curve(s)
        steps = sorted(set(cp) & set(cs))
        lower = sum(cp[k] < cs[k] for k in steps)
        final = steps[-1]
        # first step at which scratch reaches the pretrained model's first evaluation value
        first = steps[0]
        catch_up = next((k for k in steps if cs[k] <= cp[first]), None)
        per_seed.append({"seed": p["seed"], "evaluations": len(steps), "pretrained_lower_at": lower,
                         "final_step": final, "final_pretrained": cp[final], "final_scratch": cs[final],
                         "first_step": first, "pretrained_at_first": cp[first], "scratch_reaches_it_at": catch_up})
    if not per_seed:
        return {"verdict": "not measured", "per_seed": []}
    held = all(d["pretrained_lower_at"] == d["evaluations"] for d in per_seed)
    worse = all(d["pretrained_lower_at"] == 0 for d in per_seed)
    verdict = "held" if held else "did not hold" if worse else "mixed"
    if len(per_seed) == 1 and verdict != "mixed":
        verdict += " (one seed)"
    return {"verdict": verdict, "per_seed": per_seed}


def _steps_claim(sweep: list[dict[str, Any]]) -> dict[str, Any]:
    by_steps: dict[int, list[float]] = {}
    for r in sweep:
        by_steps.setdefault(r["sampling_steps"], []).append(r["perplexity"])
    ks = sorted(by_steps)
    ppl = [mean(by_steps[k]) for k in ks]
    if len(ks) < 2:
        return {"verdict": "not measured"}
    monotone = all(b < a for a, b in zip(ppl, ppl[1:], strict=False))
    return {"verdict": "held" if monotone else "did not hold (not monotone)", "steps": ks, "perplexity": ppl}


def verdicts(runs: list[dict[str, Any]], sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """The four claims, each with a verdict and the numbers behind it."""
    c = _by_config(runs)
    get = c.get
    return {
        "spindle_beats_d3pm": _compare(get(BASE, []), get("d3pm-tad-pretrained", [])),
        "tad_vs_lte": _compare(get(BASE, []), get("spindle-lte-pretrained", [])),
        "tad_vs_pte": _compare(get(BASE, []), get("spindle-pte-pretrained", [])),
        "pretrained_converges_faster": _convergence(get(BASE, []), get("spindle-tad-scratch", [])),
        "more_steps_lower_perplexity": _steps_claim(sweep),
    }


def _claim_lines(v: dict[str, Any]) -> list[str]:
    def cmp_line(title: str, d: dict[str, Any], a: str, b: str) -> str:
        if "difference" not in d:
            return f"| {title} | not measured | {d['verdict']} |"
        spread = "" if d["seed_spread"] is None else (
            f"; largest seed-to-seed spread {d['seed_spread']:.1f}: every paired difference "
            + ("exceeds it" if d.get("beyond_spread") else "does not exceed it"))
        return (f"| {title} | PPL {a} {d['claimed_better']:.1f} vs {b} {d['other']:.1f}: "
                f"{d['difference']:+.1f} ({100 * d['relative']:+.1f} %) in favour of {a}, seeds {d['seeds']}{spread} "
                f"| **{d['verdict']}** |")

    conv = v["pretrained_converges_faster"]
    conv_text = "; ".join(
        f"seed {d['seed']}: lower at {d['pretrained_lower_at']}/{d['evaluations']} evaluations, final "
        f"{d['final_pretrained']:.2f} vs {d['final_scratch']:.2f} nats/word at step {d['final_step']}; scratch "
        + (f"reaches the pretrained step-{d['first_step']} value ({d['pretrained_at_first']:.2f}) at step "
           f"{d['scratch_reaches_it_at']}" if d["scratch_reaches_it_at"] is not None
           else f"never reaches the pretrained step-{d['first_step']} value ({d['pretrained_at_first']:.2f})")
        for d in conv["per_seed"]) or "not measured"
    st = v["more_steps_lower_perplexity"]
    st_text = ", ".join(f"{k}: {p:.1f}" for k, p in zip(st.get("steps", []), st.get("perplexity", []), strict=False))
    return [
        "| claim | measured here | verdict |", "|---|---|---|",
        cmp_line("spindle schedule beats the D3PM schedule (PPL)", v["spindle_beats_d3pm"], "spindle", "D3PM"),
        cmp_line("TAD at least as good as LTE (PPL)", v["tad_vs_lte"], "TAD", "LTE"),
        cmp_line("TAD at least as good as PTE (PPL)", v["tad_vs_pte"], "TAD", "PTE"),
        f"| pretrained init converges faster (validation NELBO) | {conv_text} | **{conv['verdict']}** |",
        f"| more steps, lower PPL (discretised ELBO, PPL by steps) | {st_text or 'not measured'} | **{st['verdict']}** |",
    ]


def smoke_markdown(res: dict[str, Any]) -> str:
    """The report of a smoke run: what ran, and that its numbers mean nothing (no tables, no verdicts)."""
    p = res["preset"]
    configs = sorted({r["config"] for r in res["runs"]})
    return "\n".join([
        f"# Smoke run of the paper-claims pipeline (preset `{p['name']}`)", "",
        f"- command: `{res['command']}`",
        f"- date: {res['started']} (UTC), wall time {res['duration_s'] / 60:.1f} min, commit {res['git_commit']}",
        f"- ran: {len(res['runs'])} variants ({', '.join(configs)}) trained for {p['steps']} steps each, evaluated, "
        f"and a sweep of {len(res['sweep'])} sampling-step settings",
        "",
        f"This is a smoke run: {p['steps']}-step models measure nothing (their perplexities are astronomical), so "
        "it reports no numbers and no verdicts. The claims: `python -m bench.paper` (preset small).",
    ]) + "\n"


def markdown(res: dict[str, Any]) -> str:
    """The report: command, date, sizes, the paper-layout tables and the verdicts (a smoke run:
    :func:`smoke_markdown`)."""
    if res.get("smoke"):
        return smoke_markdown(res)
    p = res["preset"]
    c = _by_config(res["runs"])
    lines = [
        f"# DiffusionBERT's claims at small scale (preset `{p['name']}`)", "",
        f"- command: `{res['command']}`",
        f"- date: {res['started']} (UTC), wall time {res['duration_s'] / 60:.1f} min, commit {res['git_commit']}, "
        f"{res['cpu_count']} CPU cores (shared), {p['jobs']} parallel jobs x {p['threads']} thread(s)",
        f"- every variant: {p['steps']} steps x batch {p['batch_size']} x {p['max_len']} tokens, AdamW lr {p['lr']}, "
        f"warm-up {p['warmup_steps']}, D3PM hybrid loss, T = 1000, corpus `{p['data']}`; same data order, "
        f"times and masks for the same seed",
        f"- test: ELBO on {int(res['runs'][0]['test_sentences'])} test sentences x {p['elbo_samples']} draws "
        f"(the same draws for every model); BLEU-4 / Self-BLEU of {p['bleu_samples']} samples, "
        f"{p['sample_steps']} steps, top-k {p['top_k']}, against the whole test split", "",
        "## Table 2 layout (values: mean over seeds, then per seed)", "",
        "| model | seeds | PPL (ELBO bound) down | BLEU-4 up | Self-BLEU down |", "|---|---|---|---|---|",
    ]
    nan = float("nan")
    for config in LABELS:
        rows = c.get(config)
        if not rows:
            continue
        lines.append(f"| {LABELS[config]} | {len(rows)} | {_fmt([r['perplexity'] for r in rows], '.1f')} | "
                     f"{_fmt([r['bleu4'] for r in rows], '.4f')} | {_fmt([r['self_bleu4'] for r in rows], '.4f')} |")
    lines += ["", "The same models with the authors' normalisations: perplexity per real wordpiece (real tokens'"
              " bound, T = 1000) and BLEU-4 / Self-BLEU as the mean of per-sample scores (no smoothing).", "",
              "| model | PPL per wordpiece down | BLEU-4 (mean) up | Self-BLEU (mean) down |", "|---|---|---|---|"]
    for config in LABELS:
        rows = c.get(config)
        if rows:
            lines.append(f"| {LABELS[config]} | {_fmt([r.get('ppl_per_wordpiece', nan) for r in rows], '.1f')} | "
                         f"{_fmt([r.get('bleu4_mean', nan) for r in rows], '.4f')} | "
                         f"{_fmt([r.get('self_bleu4_mean', nan) for r in rows], '.4f')} |")
    sweep = res["sweep"]
    if sweep:
        lines += ["", f"## Table 3 layout: sampling steps (`{res['best']}`, mean over seeds)", "",
                  f"| steps | seconds for {p['bleu_samples']} samples | PPL (discretised ELBO, T = steps) | "
                  "BLEU-4 | Self-BLEU |", "|---|---|---|---|---|"]
        for k in sorted({r["sampling_steps"] for r in sweep}):
            rows = [r for r in sweep if r["sampling_steps"] == k]
            lines.append(f"| {k} | {_fmt([r['sample_seconds'] for r in rows], '.2f')} | "
                         f"{_fmt([r['perplexity'] for r in rows], '.1f')} | {_fmt([r['bleu4'] for r in rows], '.4f')} | "
                         f"{_fmt([r['self_bleu4'] for r in rows], '.4f')} |")
        ref = c.get(res["best"], [])
        if ref:
            lines.append(f"| T = 1000 (the trained ELBO) | | {_fmt([r['perplexity'] for r in ref], '.1f')} | | |")
    lines += ["", "## The paper's claims at this scale", "", *_claim_lines(res["verdicts"]), "",
              "![validation NELBO per word](" + f"{p['name']}.png)", "",
              "Examples (seed 0, first three samples):", ""]
    for config in LABELS:
        rows = c.get(config)
        if rows:
            lines.append(f"- {LABELS[config]}: " + " / ".join(f"`{t}`" for t in rows[0]["examples"]))
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[dict[str, Any]], path: Path) -> bool:
    """PNG: validation nats/word vs step; left pretrained vs scratch per seed, right every variant.
    False (a note on stderr, no file) where matplotlib is not installed."""
    from bench.report import import_pyplot

    plt = import_pyplot(path.name)
    if plt is None:
        return False
    c = _by_config(runs)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    for config, style in ((BASE, "-"), ("spindle-tad-scratch", "--")):
        for r in c.get(config, []):
            curve = _curve(r)
            axes[0].plot(list(curve), list(curve.values()), style, marker=".",
                         label=f"{'MiniLM init' if config == BASE else 'scratch'}, seed {r['seed']}")
    axes[0].set_title("pretrained (MiniLM) vs from scratch, same architecture")
    for config, rows in c.items():
        curves = [_curve(r) for r in rows]
        steps = sorted(set.intersection(*(set(cv) for cv in curves)))
        axes[1].plot(steps, [mean(cv[k] for cv in curves) for k in steps], marker=".",
                     label=f"{config} (mean of {len(rows)})")
    axes[1].set_title("every variant (mean over seeds)")
    for ax in axes:
        ax.set_xlabel("training step")
        ax.set_ylabel("validation NELBO (nats / word)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(res: dict[str, Any], out_dir: Path) -> list[Path]:
    """``<preset>.json``, ``<preset>.md`` and (not for a smoke run, and only with matplotlib)
    ``<preset>.png`` under ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = res["preset"]["name"]
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md", out_dir / f"{stem}.png"]
    paths[0].write_text(json.dumps(res, indent=2, default=str) + "\n")
    paths[1].write_text(markdown(res))
    if res.get("smoke") or not plot_curves(res["runs"], paths[2]):
        paths.pop()
    return paths
