"""``python -m bench.paper [--preset small|full|quick] [--quick]``: train the variants, evaluate, report.

Trains every variant of the preset with the same budget (cached under
``~/.cache/dbert-kernels/paper/<preset>/``: a rerun only evaluates), evaluates each on the test
split, sweeps the sampling steps of the best one, and writes ``<preset>.md`` (tables in the
paper's layout, verdicts), ``<preset>.png`` (validation curves) and ``<preset>.json`` to
``runs/bench/paper/`` (``runs/bench/quick/paper/`` for ``--quick``; the committed results in
``bench/results/paper/`` are only written with ``--out``). ``--quick`` is a smoke run: it checks
that the pipeline runs, and reports no numbers or verdicts (its 4-step models measure nothing).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from statistics import mean
from typing import Any

from . import report
from .presets import PRESETS, Preset, is_smoke, variants
from .runs import cache_root, sweep_point, train_and_evaluate

#: Results of a run without ``--out``: git-ignored, so that no run replaces the committed bench/results/paper/.
RESULTS = Path(__file__).resolve().parent.parent.parent / "runs" / "bench"


def _map(fn: Callable[..., dict[str, Any]], jobs: list[tuple[Any, ...]], workers: int) -> list[dict[str, Any]]:
    """``fn(*job)`` for every job, in ``workers`` spawned processes (inline for 1); results in order."""
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        return [f.result() for f in futures]


def run(preset: Preset, root: Path, out_dir: Path, command: str) -> dict[str, Any]:
    """Train and evaluate every variant, sweep the best one's steps, write the report; the results."""
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    todo = variants(preset)
    print(f"{len(todo)} variants x {preset.steps} steps ({preset.jobs} jobs x {preset.threads} threads), "
          f"cache {root / (preset.cache_name or preset.name)}", flush=True)
    runs = _map(train_and_evaluate, [(preset, v, str(root)) for v in todo], preset.jobs)
    configs: dict[str, list[float]] = {}
    for r in runs:
        configs.setdefault(r["config"], []).append(r["perplexity"])
    best = min(configs, key=lambda k: mean(configs[k]))
    best_variants = [v for v in todo if v.config_name == best]
    sweep = _map(sweep_point, [(preset, v, str(root), k) for v in best_variants for k in preset.sweep_steps],
                 preset.jobs)
    res = {
        "command": command, "started": started.strftime("%Y-%m-%d %H:%M"), "duration_s": time.perf_counter() - t0,
        "git_commit": report_commit(), "cpu_count": os.cpu_count(), "preset": preset.as_dict(),
        "best": best, "runs": runs, "sweep": sweep, "smoke": is_smoke(preset),
        "verdicts": None if is_smoke(preset) else report.verdicts(runs, sweep),
    }
    paths = report.write(res, out_dir)
    print(report.markdown(res))
    print("results: " + ", ".join(str(p) for p in paths))
    return res


def report_commit() -> str | None:
    from bench.report import _git_commit

    return _git_commit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.paper", description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="small",
                   help="sizes: small (~55 min idle 2-core CPU, 3 seeds, the committed run), full (~90 min idle 2-core CPU), quick (smoke)")
    p.add_argument("--quick", action="store_true",
                   help="same as --preset quick: a smoke run (under a minute) that reports no numbers or verdicts")
    p.add_argument("--steps", type=int, default=None, help="override the preset's training steps per variant")
    p.add_argument("--seeds", default=None, help="override the seeds, comma-separated (e.g. 0,1,2)")
    p.add_argument("--jobs", type=int, default=None, help="parallel processes (default: the preset's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--cache", type=Path, default=None, help="checkpoint cache (default ~/.cache/dbert-kernels/paper)")
    p.add_argument("--out", type=Path, default=None,
                   help="results directory (default runs/bench/paper, runs/bench/quick/paper with --quick)")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    preset = PRESETS["quick" if args.quick else args.preset]
    overrides: dict[str, Any] = {}
    if args.steps is not None:
        if args.steps < 1:
            raise SystemExit("--steps must be >= 1")
        overrides["steps"] = args.steps
    if args.seeds:
        seeds = tuple(int(s) for s in args.seeds.split(","))
        overrides.update(seeds=seeds, ablation_seeds=seeds)
    for name in ("jobs", "threads"):
        if getattr(args, name) is not None:
            if getattr(args, name) < 1:
                raise SystemExit(f"--{name} must be >= 1")
            overrides[name] = getattr(args, name)
    if overrides:  # a custom budget: keep its checkpoints apart from the preset's
        tag = "-".join(f"{k}{'_'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in overrides.items()
                       if k in ("steps", "seeds"))
        cache = None if "steps" in overrides else (preset.cache_name or preset.name)
        preset = replace(preset, **overrides, name=f"{preset.name}-{tag}" if tag else preset.name, cache_name=cache)
    out = args.out or (RESULTS / "quick" / "paper" if preset.name.startswith("quick") else RESULTS / "paper")
    command = "python -m bench.paper " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    return run(preset, args.cache or cache_root(), out, command.strip())


if __name__ == "__main__":
    main()
