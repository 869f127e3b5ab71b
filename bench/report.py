"""Results: the environment of a run, JSON, a markdown summary, a PNG plot and the index.

A run writes ``<tag>.json``, ``<tag>.md`` and ``<tag>.png`` into the results directory, where
``tag`` names the device (``cpu`` or ``cuda-<card>``), and rewrites ``README.md`` there, the index
of every run found in the directory.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dbert_kernels.threads import available_cores

__all__ = ["environment", "device_tag", "write_results", "markdown", "plot", "write_index", "import_pyplot",
           "write_atomic"]

RANDOM_WEIGHTS_NOTE = (
    "End-to-end models use random weights: speed does not depend on the weights "
    "(no quality is measured by the end-to-end section)."
)


PAPER_TABLE3 = (
    "For comparison, the paper (Table 3, one A100, batch not stated): DiffusionBERT 16 steps 1.80 s "
    "(PPL 75.66), 64 steps 4.25 s (65.83), 128 steps 7.53 s (63.78); GPT 64 tokens 1.55 s (PPL 38.7)."
)


def import_pyplot(what: str) -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or None (with a one-line note on stderr) when
    matplotlib is not installed: plots are optional, the tables and the JSON never need it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"bench: matplotlib is not installed: {what} not plotted (tables and JSON written)",
              file=sys.stderr, flush=True)
        return None
    return plt


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so that a run killed
    mid-write (``timeout``) leaves the previous complete file, never a truncated one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_average() -> list[float] | None:
    """The 1 / 5 / 15-minute load averages, rounded (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - platforms without getloadavg
        return None


def json_floats(m: dict[str, Any]) -> dict[str, Any]:
    """``m`` with its float values rounded to 6 decimals and NaN / inf as None (strict JSON)."""
    return {k: ((round(v, 6) if math.isfinite(v) else None) if isinstance(v, float) else v) for k, v in m.items()}


def fmt(x: Any, spec: str = ".3f") -> str:
    """A table cell: ``x`` formatted with ``spec``, ``-`` for None, NaN or inf."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, spec)


def _version(module: str) -> str | None:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "?"))
    except Exception:  # noqa: BLE001 - a missing or broken optional package is just absent
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Device name, core count, package versions, commit (``-dirty`` when the tree differs) and platform of this run."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        extra: dict[str, Any] = {"cuda": torch.version.cuda,
                                 "memory_GiB": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)}
    else:
        name = _cpu_name()
        extra = {"cpu_count": available_cores(), "torch_threads": torch.get_num_threads(),
                 "load_average": load_average(), "native": native_info()}
    return {
        "device": device.type, "device_name": name, **extra, "platform": platform.platform(),
        "python": platform.python_version(), "git_commit": _git_commit(),
        "versions": {m: _version(m) for m in ("dbert_kernels", "torch", "transformers", "triton", "numpy")},
    }


def native_info() -> str:
    """The instruction-set level the native kernels were built for and dispatched to (CPU numbers
    depend on it), or why they are unavailable."""
    try:
        from dbert_kernels import native

        return native.build_info()
    except Exception as exc:  # a failed build is reported, not fatal
        return f"dbert_native: unavailable ({type(exc).__name__})"


def device_tag(env: dict[str, Any]) -> str:
    """File name stem of a run: ``cpu`` or ``cuda-<card name slug>``."""
    if env["device"] != "cuda":
        return "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", env["device_name"].lower()).strip("-")
    return f"cuda-{slug}"


def _ms(s: float) -> str:
    return f"{1e3 * s:.3g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


BUSY_MARK = "(busy)"


def _busy(r: dict[str, Any]) -> str:
    """The mark of a cell measured while the load average exceeded the core count ("" otherwise)."""
    return f" {BUSY_MARK}" if r.get("overloaded") else ""


def busy_note(results: Sequence[dict[str, Any]], cores: Any) -> list[str]:
    """A line explaining the busy mark, where some of ``results`` carry it."""
    n = sum(bool(r.get("overloaded")) for r in results)
    if not n:
        return []
    return ["", f"{BUSY_MARK}: {n} of {len(results)} cells measured while the load average exceeded the "
            f"{cores} cores (load_before / load_after in the JSON): other processes took CPU time, so these "
            "timings and the ratios built on them are unreliable."]


def kernel_lines(res: dict[str, Any]) -> list[str]:
    """Markdown of the kernel section."""
    k = res.get("kernels")
    if not k:
        return ["Kernel benchmarks not run."]
    rows = [
        [r["op"], r["variant"], r["rows"], r["vocab"], r["dtype"], r["backend"], _ms(r["median_s"]) + _busy(r),
         f"{r['bandwidth_GBps']:.3g}", f"{100 * r['fraction_of_copy']:.3g}",
         f"{r['speedup_vs_reference']:.3g}" if r.get("speedup_vs_reference") else "-"]
        for r in k["results"]
    ]
    return [
        f"Device-to-device copy (the speed of light): **{k['copy_GBps']:.1f} GB/s** "
        f"({k['copy_bytes'] >> 20} MiB buffer, read + write counted), same run.", "",
        *_table(["op", "variant", "rows", "V", "dtype", "backend", "median ms", "GB/s", "% of copy",
                 "x reference"], rows),
        *busy_note(k["results"], res["environment"].get("cpu_count")),
        *[f"\nSkipped: {s}" for s in k.get("skipped", [])],
    ]


def e2e_lines(res: dict[str, Any]) -> list[str]:
    """Markdown of the end-to-end section."""
    e = res.get("e2e")
    if not e:
        return ["End-to-end benchmarks not run."]
    variants = [v for v in e["config"]["gpt_variants"] if any(g["variant"] == v for g in e["gpt"])]
    head = ["tokens", "batch", "steps", "backend", "latency ms", "tokens/s", "ms/step", "model %", "sampler %"]
    head += [f"/ GPT {v}" for v in variants]
    rows = []
    for r in e["diffusion"]:
        ratios = [f"{r['ratio_vs_gpt'][v]:.3g}" if r["ratio_vs_gpt"].get(v) else "-" for v in variants]
        rows.append([r["tokens"], r["batch"], r["steps"], r["backend"], _ms(r["median_s"]) + _busy(r),
                     f"{r['tokens_per_s']:.4g}", f"{r['ms_per_step']:.3g}", f"{100 * r['model_share']:.0f}",
                     f"{100 * r['sampler_share']:.0f}", *ratios])
    gpt_rows = [[g["variant"], g["tokens"], g["batch"], _ms(g["median_s"]) + _busy(g), f"{g['tokens_per_s']:.4g}"]
                for g in e["gpt"]]
    b, g = e["models"]["diffusionbert"], e["models"]["gpt2"]
    lines = [
        f"DiffusionBERT: BertForMaskedLM {b['layers']} layers, {b['hidden']} hidden, V = {b['vocab']} "
        f"({b['params'] / 1e6:.1f}M parameters); GPT-2: {g['layers']} layers, {g['hidden']} hidden, "
        f"V = {g['vocab']} ({g['params'] / 1e6:.1f}M). dtype {e['config']['dtype']}, top-k "
        f"{e['config']['top_k']} on both sides; DiffusionBERT generates `[CLS] n tokens [SEP]` with "
        "the posterior sampler, GPT-2 n tokens after one BOS token.", "",
        f"*{RANDOM_WEIGHTS_NOTE}*", "",
        "Ratio columns: DiffusionBERT tokens/s divided by GPT-2 tokens/s (same tokens and batch, "
        "same run); above 1 means DiffusionBERT is faster. Model % / sampler %: share of the "
        "generation time spent in the denoiser call (encoder + LM head on revealed rows) and in "
        "the rest (sampling ops, unmasking decisions, loop).", "",
        *_table(head, rows), "", *_table(["GPT-2 variant", "tokens", "batch", "latency ms", "tokens/s"], gpt_rows),
        *busy_note([*e["diffusion"], *e["gpt"]], res["environment"].get("cpu_count")),
    ]
    for s in e.get("skipped", []):
        lines += ["", f"Skipped: {s}"]
    return lines


def quality_lines(res: dict[str, Any]) -> list[str]:
    """Markdown of the steps-versus-quality section."""
    q = res.get("quality")
    if not q:
        return ["Not run."]
    if "skipped" in q:
        return [f"Skipped: {q['skipped']}"]
    keys = [k for k in q["results"][0] if k not in ("steps", "samples", "batch", "seconds", "seconds_per_batch")]
    rows = [[r["steps"], f"{r['seconds']:.3g}", f"{r['seconds_per_batch']:.3g}", *[f"{r[k]:.4g}" for k in keys]]
            for r in q["results"]]
    return [f"Checkpoint `{q['checkpoint']}`, {q['results'][0]['samples']} samples, batch "
            f"{q['results'][0]['batch']}.", "", *_table(["steps", "seconds", "s / batch", *keys], rows), "",
            PAPER_TABLE3]


def markdown(res: dict[str, Any], png_name: str | None) -> str:
    """The markdown summary of one run."""
    env = res["environment"]
    vers = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    lines = [
        f"# Benchmark on {env['device_name']} ({res['mode']})", "",
        f"- command: `{res['command']}`",
        f"- date: {res['started']}, wall time {res['duration_s']:.0f} s, commit {env.get('git_commit')}",
        f"- versions: {vers}",
    ]
    if res.get("in_progress"):
        lines.append("- **in progress**: written after each measurement; a run cut short (timeout) "
                     "stops here, the rest of its grid was not measured")
    if env["device"] == "cpu":
        load = env.get("load_average")
        at_start = f", load average at start {' / '.join(map(str, load))}" if load else ""
        lines.append(f"- CPU: {env.get('cpu_count')} cores, torch threads {env.get('torch_threads')}{at_start}; "
                     "on the CPU only the reference path and the native backend are timed "
                     "(the Triton interpreter is not a speed path)")
        if env.get("native"):
            lines.append(f"- native kernels: {env['native']}")
    lines += [f"- note: {n}" for n in res.get("notes", [])]
    lines += ["", "## Kernels", "", *kernel_lines(res), "", "## End to end: DiffusionBERT against GPT-2", ""]
    if png_name and res.get("e2e"):
        lines += [f"![tokens/s against steps]({png_name})", ""]
    lines += [*e2e_lines(res), "", "## Steps versus time versus quality", "", *quality_lines(res), ""]
    if "tradeoff" in res:
        from .tradeoff import lines as tradeoff_lines

        png = png_name if png_name and not res.get("e2e") else None
        lines += ["## Speed against quality: DiffusionBERT, its GPT-2 baseline and a judge", "",
                  *tradeoff_lines(res["tradeoff"], png), ""]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> bool:
    """PNG of tokens/s against steps (DiffusionBERT per batch and backend, GPT-2 as lines)."""
    e = res.get("e2e")
    if not e or not e["diffusion"]:
        return False
    plt = import_pyplot(path.name)
    if plt is None:
        return False

    token_lens = sorted({r["tokens"] for r in e["diffusion"]})
    batches = sorted({r["batch"] for r in e["diffusion"]})
    colors = {b: plt.cm.viridis(i / max(1, len(batches) - 1) * 0.85) for i, b in enumerate(batches)}
    styles = {"kv-cache": "--", "static": ":", "static-compile": "-."}
    markers = {"reference": "o", "triton": "s", "native": "^"}
    fig, axes = plt.subplots(1, len(token_lens), figsize=(6.5 * len(token_lens), 4.8), squeeze=False)
    for ax, n in zip(axes[0], token_lens, strict=True):
        for b in batches:
            for backend in sorted({r["backend"] for r in e["diffusion"]}):
                pts = sorted((r["steps"], r["tokens_per_s"]) for r in e["diffusion"]
                             if r["tokens"] == n and r["batch"] == b and r["backend"] == backend)
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker=markers.get(backend, "x"), color=colors[b],
                            label=f"DiffusionBERT b={b} {backend}")
            for g in e["gpt"]:
                if g["tokens"] == n and g["batch"] == b:
                    ax.axhline(g["tokens_per_s"], color=colors[b], ls=styles.get(g["variant"], "-"), lw=1,
                               label=f"GPT-2 b={b} {g['variant']}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("denoising steps")
        ax.set_ylabel("tokens / s")
        ax.set_title(f"{n} tokens, {res['environment']['device_name'][:40]}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle("DiffusionBERT vs GPT-2 (random weights; speed does not depend on them)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_results(res: dict[str, Any], out_dir: Path, tag: str, *, with_plot: bool = True) -> dict[str, Path]:
    """Write ``tag``.json / .md / .png into ``out_dir`` and refresh its index; returns the paths.

    ``with_plot=False`` (the writes after each measurement of a run in progress) writes only the
    JSON and the markdown; the plot needs matplotlib and is skipped with a note without it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{tag}.json", "md": out_dir / f"{tag}.md", "png": out_dir / f"{tag}.png"}
    write_atomic(paths["json"], json.dumps(res, indent=1, sort_keys=False) + "\n")
    has_png = with_plot and plot(res, paths["png"])
    if with_plot and not has_png and "tradeoff" in res:
        from .tradeoff import plot as tradeoff_plot

        has_png = tradeoff_plot(res["tradeoff"], paths["png"], f"DiffusionBERT vs its GPT-2 baseline, "
                                f"{res['environment']['device_name'][:40]}")
    if not has_png:
        paths.pop("png")
    write_atomic(paths["md"], markdown(res, paths["png"].name if has_png else None))
    index = write_index(out_dir)
    if index is None:
        print(f"bench: {out_dir / 'README.md'} is a hand-written index: add this run to it", file=sys.stderr)
    else:
        paths["index"] = index
    return paths


#: The first line of an index that :func:`write_index` wrote (and may rewrite).
INDEX_MARK = "<!-- written by bench.report.write_index; a hand-written index has no such line -->"


def write_index(out_dir: Path) -> Path | None:
    """``README.md`` of ``out_dir``: one line per run found there, with its headline numbers.

    A hand-written ``README.md`` (one without :data:`INDEX_MARK`, such as the curated index of
    ``bench/results``) is left alone: returns None, and the run is to be added to it by hand."""
    index = out_dir / "README.md"
    if index.exists() and INDEX_MARK not in index.read_text():
        return None
    rows = []
    for path in sorted(out_dir.glob("*.json")):
        try:
            res = json.loads(path.read_text())
            env = res["environment"]
        except (ValueError, KeyError):
            continue
        best = max((r["ratio_vs_gpt"].get("kv-cache") or 0 for r in res.get("e2e", {}).get("diffusion", [])),
                   default=0)
        rows.append([f"[{path.stem}]({path.stem}.md)", env["device_name"], res["mode"], res["started"][:10],
                     f"`{res['command']}`", f"{best:.3g}" if best else "-"])
    lines = [INDEX_MARK, "# Benchmark results", "",
             "Written by `python -m bench` (see docs/bench.md); one file set (JSON, markdown, PNG) per device.",
             "", *_table(["run", "device", "mode", "date", "command",
                          "best DiffusionBERT / GPT-2 (KV cache) tokens/s"], rows), ""]
    write_atomic(index, "\n".join(lines))
    return index
