"""``python -m bench``: kernel, end-to-end and steps-versus-quality benchmarks in one command.

Examples::

    python -m bench --device cpu             # the CPU table in a few minutes
    python -m bench --device cpu --quick     # smoke run, seconds
    python -m bench --device cuda            # the GPU run (bench/gpu.sh), < 8 min on an H100
    python -m bench --only quality --checkpoint ckpt/  # the paper's Table 3 with a trained model
    python -m bench --only tradeoff --checkpoint ckpt/ --baseline gpt2/ --judge judge/  # speed vs quality
    python -m bench --only oracle            # sampler error on an exact denoiser (bench/oracle.py)
    python -m bench --only oracle-trained    # DiffusionBERT vs GPT-2 trained on a Markov language, exact judge
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dbert_kernels.threads import available_cores, overloaded, use_default_threads

from . import e2e, kernels, quality, report, tradeoff
from .configs import BenchConfig, config_for

SECTIONS = ("kernels", "e2e", "quality", "tradeoff", "oracle", "oracle-trained")
DEFAULT_SECTIONS = ("kernels", "e2e", "quality")
#: Results of a run without ``--out``: git-ignored, so that no run replaces the committed bench/results/.
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "runs" / "bench"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    p.add_argument("--only", default=",".join(DEFAULT_SECTIONS),
                   help="comma-separated sections to run (kernels, e2e, quality, tradeoff, oracle, oracle-trained); default "
                        "all but tradeoff, oracle and oracle-trained")
    p.add_argument("--backends", default=None,
                   help="comma-separated backends to time (default: every available one on the device)")
    p.add_argument("--checkpoint", default=None, help="trained model for the quality section (dbert_model); DiffusionBERT for oracle-trained")
    p.add_argument("--baseline", default=None, help="GPT-2 checkpoint (dbert train --arch gpt2) for the tradeoff and oracle-trained sections")
    p.add_argument("--judge", default=None, help="GPT-2 checkpoint that judges the samples in the tradeoff section")
    p.add_argument("--out", type=Path, default=None,
                   help="results directory (default runs/bench, runs/bench/quick with --quick; the committed "
                        "results in bench/results/ are only written when --out names them)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new measurements after this many seconds (the rest is listed as skipped)")
    p.add_argument("--note", action="append", default=[], help="a note recorded with the results")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: OMP_NUM_THREADS if set, else 1 for --quick's small ops, "
                        "else one per core left free by the load average; see dbert_kernels.threads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


class Budget:
    """Wall-clock budget: ``ok()`` is False once ``seconds`` have passed since the start."""

    def __init__(self, seconds: float | None) -> None:
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def ok(self) -> bool:
        return self.seconds is None or self.elapsed() < self.seconds


class _NoBar:
    """Stands in for a tqdm bar (no progress shown) where tqdm is not installed or not wanted."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc="bench", unit="case", file=sys.stderr)


Save = Callable[[], None]


def _no_save() -> None:
    pass


def _backends(arg: str | None, device: torch.device) -> list[str]:
    available = kernels.timed_backends(device)
    if arg is None:
        return available
    wanted = [b.strip() for b in arg.split(",") if b.strip()]
    missing = [b for b in wanted if b not in available]
    if missing:
        raise SystemExit(f"backends {missing} are not available on {device.type} (available: {available})")
    return wanted


def work_elements(cfg: BenchConfig) -> int:
    """Elements of the largest op of a run's grid (a kernel's rows x V, an end-to-end call's logits),
    the work size that :func:`dbert_kernels.threads.default_threads` weighs."""
    k, e = cfg.kernels, cfg.e2e
    return max(max(k.rows) * max(k.vocabs), max(e.tokens) * max(e.batches) * max(e.bert_vocab, e.gpt_vocab))


def _load_text() -> str:
    load = report.load_average()
    return "unknown" if load is None else " / ".join(f"{x:.2f}" for x in load)


def _load_fields(before: list[float] | None) -> dict[str, Any]:
    """The 1-minute load average before and after a timed cell, and whether either exceeded the cores."""
    after = report.load_average()
    one = [x[0] for x in (before, after) if x is not None]
    return {"load_before": before[0] if before else None, "load_after": after[0] if after else None,
            "overloaded": any(x > available_cores() for x in one)}


def run_kernels(cfg: BenchConfig, device: torch.device, backends: list[str], bar: Any, budget: Budget,
                section: dict | None = None, save: Save = _no_save) -> dict:
    """The kernel section; fills ``section`` (a new dict by default) as it goes and calls
    ``save()`` after each case, so that a run killed part-way keeps what it measured."""
    copy_bps = kernels.measure_copy(device, cfg.kernels)
    section = {} if section is None else section
    section.update({"copy_GBps": copy_bps / 1e9, "copy_bytes": cfg.kernels.copy_bytes, "backends": backends,
                    "results": [], "skipped": []})
    results, skipped = section["results"], section["skipped"]
    for case in kernels.kernel_cases(cfg.kernels):
        bar.set_postfix_str(f"{case.op} {case.variant} {case.rows}x{case.vocab} {case.dtype}")
        if budget.ok():
            before = report.load_average()
            measured = kernels.run_kernel_case(case, device, backends, cfg.kernels, copy_bps)
            results += [{**r, **_load_fields(before)} for r in measured]
            save()
        else:
            skipped.append(f"kernel {case.op} {case.variant} rows={case.rows} V={case.vocab} {case.dtype} (budget)")
        bar.update(1)
    return section


def _consume(runs: Iterator[dict], n: int, label: str, out: list[dict], skipped: list[str], bar: Any,
             budget: Budget, save: Save = _no_save) -> None:
    """Take up to ``n`` results from the lazy ``runs`` while the budget lasts, calling ``save()``
    after each one.

    A configuration that raises ends this group (listed in ``skipped`` with its error) and keeps
    what was measured before it and in the other groups.
    """
    for done in range(n):
        if not budget.ok():
            skipped.append(f"{label}: {n - done} of {n} configurations (time budget)")
            bar.update(n - done)
            return
        try:
            before = report.load_average()
            r = next(runs)
            r.update(_load_fields(before))
        except Exception as exc:  # e.g. a compile failure of one GPT-2 variant on this machine
            skipped.append(f"{label}: {n - done} of {n} configurations (error: {exc!r})"[:600])
            print(f"bench: {label} failed: {exc!r}", file=sys.stderr, flush=True)
            bar.update(n - done)
            return
        bar.set_postfix_str(f"{label} " + " ".join(f"{k}={r[k]}" for k in ("tokens", "batch", "steps") if k in r))
        out.append(r)
        save()
        bar.update(1)


def _add_ratios(section: dict) -> None:
    """``ratio_vs_gpt`` of each DiffusionBERT result: its tokens/s over each GPT-2 variant's
    (same tokens and batch) measured so far."""
    for r in section["diffusion"]:
        r["ratio_vs_gpt"] = {
            g["variant"]: r["tokens_per_s"] / g["tokens_per_s"]
            for g in section["gpt"] if g["tokens"] == r["tokens"] and g["batch"] == r["batch"]
        }


def run_e2e(cfg: BenchConfig, device: torch.device, backends: list[str], bar: Any, budget: Budget,
            section: dict | None = None, save: Save = _no_save) -> dict:
    """The end-to-end section; fills ``section`` (a new dict by default) as it goes and calls
    ``save()`` after each configuration (GPT-2 or DiffusionBERT), with the ratios so far."""
    ec = cfg.e2e
    section = {} if section is None else section
    section.update({"config": asdict(ec), "models": {}, "backends": backends, "diffusion": [], "gpt": [],
                    "skipped": []})
    gpt, section["models"]["gpt2"] = e2e.build_gpt2(ec, device)
    bert, section["models"]["diffusionbert"] = e2e.build_bert(ec, device)
    gpt_results, diffusion, skipped = section["gpt"], section["diffusion"], section["skipped"]

    def save_with_ratios() -> None:
        _add_ratios(section)
        save()

    n_gpt = len(ec.tokens) * len(ec.batches)
    n_diff = len(ec.tokens) * len(ec.batches) * len(ec.steps) * len(backends)
    # the cheap GPT baseline first, the compiled one last, so that a budget cut keeps the ratios
    first, rest = ec.gpt_variants[:1], ec.gpt_variants[1:]
    for v in first:
        _consume(e2e.gpt_runs(gpt, ec, device, v), n_gpt, f"GPT-2 {v}", gpt_results, skipped, bar, budget,
                 save_with_ratios)
    _consume(e2e.diffusion_runs(bert, ec, device, backends), n_diff, "DiffusionBERT", diffusion, skipped, bar,
             budget, save_with_ratios)
    del bert
    for v in rest:
        _consume(e2e.gpt_runs(gpt, ec, device, v), n_gpt, f"GPT-2 {v}", gpt_results, skipped, bar, budget,
                 save_with_ratios)
    _add_ratios(section)
    return section


def run_quality(cfg: BenchConfig, device: torch.device, checkpoint: str | None, bar: Any) -> dict:
    if checkpoint is None:
        return {"skipped": "no --checkpoint given (a trained model from model/ is needed for quality)"}
    loader = quality.find_loader()
    if isinstance(loader, str):
        return {"skipped": loader}
    bar.set_postfix_str("steps vs quality")
    results = quality.run_quality(loader, checkpoint, device, cfg.quality_steps, cfg.quality_samples,
                                  batch_size=min(cfg.quality_samples, 64))
    bar.update(len(cfg.quality_steps))
    return {"checkpoint": checkpoint, "results": results}


def run_tradeoff(args: argparse.Namespace, device: torch.device, bar: Any) -> dict:
    missing = [f"--{n}" for n in ("checkpoint", "baseline", "judge") if getattr(args, n) is None]
    if missing:
        return {"skipped": f"needs {', '.join(missing)} (trained checkpoints; see docs/baseline.md)"}
    cfg = tradeoff.config_for(device.type, quick=args.quick)
    res = tradeoff.run_tradeoff(args.checkpoint, args.baseline, args.judge, device, cfg,
                                progress=lambda s: bar.set_postfix_str(s))
    bar.update(len(cfg.steps) + len(cfg.strategies) + len(cfg.gpt_variants))
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks, write the results, print the tables; returns the results dict."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown sections {unknown}: choose from {SECTIONS}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA GPU is visible: run with --device cpu")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    threads = use_default_threads(args.threads, work_elements(config_for(args.device, quick=args.quick))
                                  if args.device == "cpu" else None)
    print(f"bench: {threads} torch thread(s) on {available_cores()} core(s), load average {_load_text()}",
          file=sys.stderr, flush=True)
    if overloaded():
        print("bench: warning: the load average exceeds the core count: timings and ratios of this run are "
              "unreliable (cells measured so are marked in the tables)", file=sys.stderr, flush=True)
    out_dir = args.out or (DEFAULT_OUT / "quick" if args.quick else DEFAULT_OUT)
    if "oracle" in sections:  # its own files (oracle_cpu.json / .md), on the CPU in float64
        from . import oracle

        res_oracle = oracle.main(argv, out_dir, args.quick, progress=not args.no_progress)
        sections.remove("oracle")
        if not sections:
            return res_oracle
    if "oracle-trained" in sections:  # its own files (oracle_trained_cpu.json / .md); trains both models unless given
        from . import oracle_trained

        res_ot = oracle_trained.main(argv, out_dir, args.quick, checkpoint=args.checkpoint, baseline=args.baseline,
                                     notes=args.note, progress=not args.no_progress)
        sections.remove("oracle-trained")
        if not sections:
            return res_ot
    device = torch.device(args.device)
    cfg = config_for(args.device, quick=args.quick)
    backends = _backends(args.backends, device)
    budget = Budget(args.budget_s)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")

    total = 0
    if "kernels" in sections:
        total += len(kernels.kernel_cases(cfg.kernels))
    if "e2e" in sections:
        ec = cfg.e2e
        total += len(ec.tokens) * len(ec.batches) * (len(ec.steps) * len(backends) + len(ec.gpt_variants))
    if "quality" in sections and args.checkpoint:
        total += len(cfg.quality_steps)
    if "tradeoff" in sections:
        tc = tradeoff.config_for(device.type, quick=args.quick)
        total += len(tc.steps) + len(tc.strategies) + len(tc.gpt_variants)
    env = report.environment(device)
    res: dict[str, Any] = {
        "schema": 1, "mode": cfg.mode, "command": "python -m bench " + shlex.join(argv), "started": started,
        "environment": env, "config": cfg.as_dict(), "notes": [*([report.RANDOM_WEIGHTS_NOTE] if "e2e" in sections else []), *args.note],
    }
    tag = report.device_tag(env)
    if not {"kernels", "e2e"} <= set(sections):  # a partial run must not overwrite the full one
        tag += "-" + "-".join(sections)

    def save() -> None:
        """JSON + markdown of what is measured so far (no plot), after each measurement: a run
        stopped by ``timeout`` (bench/gpu.sh) keeps its results."""
        res["duration_s"] = budget.elapsed()
        report.write_results(res, out_dir, tag, with_plot=False)

    res["in_progress"] = True
    bar = _bar(total, not args.no_progress)
    try:
        if "kernels" in sections:
            res["kernels"] = {}
            run_kernels(cfg, device, backends, bar, budget, res["kernels"], save)
        if "e2e" in sections:
            res["e2e"] = {}
            run_e2e(cfg, device, backends, bar, budget, res["e2e"], save)
        if "quality" in sections:
            res["quality"] = run_quality(cfg, device, args.checkpoint, bar)
        if "tradeoff" in sections:
            res["tradeoff"] = run_tradeoff(args, device, bar)
    finally:
        bar.close()
    del res["in_progress"]
    res["duration_s"] = budget.elapsed()
    paths = report.write_results(res, out_dir, tag)
    print(report.markdown(res, None))
    print("results: " + ", ".join(str(p) for p in paths.values()))
    return res


if __name__ == "__main__":
    main()
