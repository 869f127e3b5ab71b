"""Time each Triton kernel against its reference twin on a CUDA GPU.

    python bench/triton_gpu.py --out bench/results

CUDA events around each call, a few warm-up calls first, then the median of ``--repeats`` calls;
inputs rotate over several non-zero random sets so that no call reuses a cached result. Writes
``triton_kernels_<card>.json`` and ``.md`` (the card from ``torch.cuda.get_device_name``).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import dbert_kernels.reference as ref
from dbert_kernels import triton_backend as tb
from dbert_kernels.params import SamplingParams

VOCAB = 30522
DEVICE = torch.device("cuda")
SPECIALS = [0, 101, 102, 103]


def time_ms(fn: Callable[[int], object], n_inputs: int, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn(i)`` over ``repeats`` calls (input set ``i % n_inputs``)."""
    for i in range(warmup):
        fn(i % n_inputs)
    torch.cuda.synchronize()
    times = []
    for i in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i % n_inputs)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sample_cases(rows: int, dtype: torch.dtype, n_inputs: int) -> list[tuple[str, Callable, Callable]]:
    dev = DEVICE
    sets = [torch.randn(rows, VOCAB, device=dev).mul_(3).to(dtype) for _ in range(n_inputs)]
    banned = torch.zeros(VOCAB, dtype=torch.bool, device=dev)
    banned[SPECIALS] = True
    prob = torch.ones(rows, device=dev)
    row_index = torch.arange(rows, device=dev)
    cases = []
    for name, t, k, p in [("T=1", 1.0, None, None), ("greedy", 0.0, None, None), ("top-k 30", 1.0, 30, None),
                          ("top-p 0.9", 1.0, None, 0.9), ("top-k 30 + top-p 0.9", 0.8, 30, 0.9)]:
        params = SamplingParams.create(temperature=t, top_k=k, top_p=p, banned=banned)

        def run(impl, i, params=params):
            return impl.sample(sets[i], None, prob, row_index, 103, params, 7, i)

        cases.append((f"sample {rows}x{VOCAB} {str(dtype)[6:]} {name}",
                      lambda i, run=run: run(ref, i), lambda i, run=run: run(tb, i)))
    return cases


def mask_cases(batch: int, length: int, n_inputs: int) -> list[tuple[str, Callable, Callable]]:
    dev = DEVICE
    ids = [torch.randint(1000, VOCAB, (batch, length), device=dev) for _ in range(n_inputs)]
    base = torch.rand(batch, device=dev)
    amp = torch.rand(batch, device=dev) * 0.3
    info = torch.rand(VOCAB, device=dev) + 0.1
    protected = torch.zeros(VOCAB, dtype=torch.bool, device=dev)
    protected[SPECIALS] = True

    def run(impl, i):
        return impl.spindle_mask(ids[i], base, amp, info, protected, "code", 103, 5, i)

    return [(f"spindle_mask {batch}x{length} code", lambda i: run(ref, i), lambda i: run(tb, i))]


def unmask_cases(batch: int, length: int, n_inputs: int) -> list[tuple[str, Callable, Callable]]:
    dev = DEVICE
    ids, cand, conf = [], [], []
    for _ in range(n_inputs):
        x = torch.randint(1000, VOCAB, (batch, length), device=dev)
        ids.append(torch.where(torch.rand(batch, length, device=dev) < 0.6, 103, x))
        cand.append(torch.randint(1000, VOCAB, (batch, length), device=dev))
        conf.append(torch.rand(batch, length, device=dev))
    k = torch.randint(1, length // 4, (batch,), device=dev)
    cases = []
    for gt in (0.0, 0.5):
        def run(impl, i, gt=gt):
            return impl.topk_unmask(ids[i], cand[i], conf[i], k, 103, gt, 3, i)

        cases.append((f"topk_unmask {batch}x{length} gumbel={gt}", lambda i, run=run: run(ref, i),
                      lambda i, run=run: run(tb, i)))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--inputs", type=int, default=4, help="input sets to rotate over")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: this script times the Triton kernels on a GPU")
    card = torch.cuda.get_device_name()
    torch.manual_seed(0)
    cases = mask_cases(512, 128, args.inputs) + unmask_cases(512, 128, args.inputs)
    cases += sample_cases(4096, torch.bfloat16, args.inputs) + sample_cases(4096, torch.float32, args.inputs)
    results = []
    for name, run_ref, run_triton in cases:
        t_ref = time_ms(run_ref, args.inputs, args.warmup, args.repeats)
        t_tri = time_ms(run_triton, args.inputs, args.warmup, args.repeats)
        results.append({"case": name, "reference_ms": t_ref, "triton_ms": t_tri, "speedup": t_ref / t_tri})
        print(f"{name:55s} reference {t_ref:9.3f} ms  triton {t_tri:9.3f} ms  x{t_ref / t_tri:6.2f}", flush=True)
    meta = {"device": card, "torch": torch.__version__, "triton": __import__("triton").__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "warmup": args.warmup, "repeats": args.repeats, "rotating_inputs": args.inputs,
            "statistic": "median of CUDA-event times"}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"triton_kernels_{re.sub(r'[^A-Za-z0-9]+', '_', card).strip('_')}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [f"# Triton kernels vs reference on {card}", "", f"{meta}", "",
             "| case | reference ms | triton ms | speed-up |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['reference_ms']:.3f} | {r['triton_ms']:.3f} | {r['speedup']:.2f} |" for r in results]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
