"""Kernel benchmarks: each public op on each available backend, against the reference path.

Cases (rows are token positions, the unit each op works on):

* ``sample``: :func:`dbert_kernels.sample` on ``[rows, V]`` logits (N(0, 3^2), never zeros) in
  fp32 / bf16, plain, top-k and top-p. Compulsory traffic: the logits once, plus the token
  (int64) and confidence (fp32) per row.
* ``spindle_mask``: the forward process (spindle, code form) on ``[rows / L, L]`` ids with
  ``L = min(rows, 128)``. Traffic: ids in, ids and mask out, token info gathered per position.
* ``topk_unmask``: confidence unmasking on the same shapes, half the positions masked.
  Traffic: ids, candidates, confidence in, ids out.

Each case is timed by :func:`bench.timing.time_calls` (median after warm-up, CUDA events on
GPU) through the public op with ``validate=False`` where it exists, so the timing is the
backend's work plus the op's small host-side set-up, which is what a caller pays.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

import dbert_kernels as dk

from .configs import KernelConfig
from .timing import copy_bandwidth, rotation_count, time_calls

__all__ = ["KernelCase", "kernel_cases", "bytes_moved", "run_kernel_case", "timed_backends"]

MASK_ID = 103
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LOGIT_SCALE = 3.0


@dataclass(frozen=True)
class KernelCase:
    """One op at one size; ``dtype`` is the logits dtype (``"int64"`` for the id-only ops)."""

    op: str
    variant: str
    rows: int
    vocab: int
    dtype: str
    top_k: int | None = None
    top_p: float | None = None

    @property
    def shape2d(self) -> tuple[int, int]:
        """``[B, L]`` of the id-only ops: ``L = min(rows, 128)`` positions per sentence."""
        length = min(self.rows, 128)
        return max(1, self.rows // length), length


def kernel_cases(cfg: KernelConfig) -> list[KernelCase]:
    """All cases of ``cfg``: sampling over rows x V x dtype x variant, then the id-only ops."""
    cases = [
        KernelCase("sample", name, rows, vocab, dtype, top_k, top_p)
        for rows in cfg.rows
        for vocab in cfg.vocabs
        for dtype in cfg.dtypes
        for name, top_k, top_p in cfg.variants
    ]
    for rows in cfg.rows:
        for vocab in cfg.vocabs:
            cases.append(KernelCase("spindle_mask", "spindle-code", rows, vocab, "int64"))
        cases.append(KernelCase("topk_unmask", "confidence", rows, cfg.vocabs[0], "int64"))
    return cases


def bytes_moved(case: KernelCase) -> int:
    """Bytes the op must read and write at least (the compulsory traffic of the case)."""
    if case.op == "sample":
        elem = torch.empty((), dtype=_DTYPES[case.dtype]).element_size()
        return case.rows * case.vocab * elem + case.rows * (8 + 4)
    batch, length = case.shape2d
    n = batch * length
    if case.op == "spindle_mask":
        # ids in (8), info gathered (4), ids out (8), mask out (1); per-row base/amp (8)
        return n * (8 + 4 + 8 + 1) + batch * 8
    if case.op == "topk_unmask":
        # ids (8), candidates (8), confidence (4) in; ids out (8); k per row (8)
        return n * (8 + 8 + 4 + 8) + batch * 8
    raise ValueError(f"unknown op {case.op!r}")


def _make_input(case: KernelCase, device: torch.device, gen: torch.Generator) -> Any:
    if case.op == "sample":
        x = torch.randn(case.rows, case.vocab, device=device, generator=gen) * _LOGIT_SCALE
        return x.to(_DTYPES[case.dtype])
    batch, length = case.shape2d
    ids = torch.randint(1000, case.vocab, (batch, length), device=device, generator=gen)
    if case.op == "spindle_mask":
        t = torch.rand(batch, device=device, generator=gen) * 1000.0
        return ids, t.cpu()
    masked = torch.rand(batch, length, device=device, generator=gen) < 0.5
    candidates = torch.randint(1000, case.vocab, (batch, length), device=device, generator=gen)
    confidence = torch.rand(batch, length, device=device, generator=gen)
    return ids.masked_fill(masked, MASK_ID), candidates, confidence


def _caller(case: KernelCase, device: torch.device, backend: str) -> Callable[[Any, int], Any]:
    if case.op == "sample":
        def call_sample(x: torch.Tensor, i: int) -> Any:
            return dk.sample(x, top_k=case.top_k, top_p=case.top_p, seed=i, offset=i,
                             validate=False, backend=backend)
        return call_sample
    if case.op == "spindle_mask":
        gen = torch.Generator().manual_seed(0)
        counts = torch.randint(0, 1_000_000, (case.vocab,), generator=gen)
        info = dk.token_information(counts, "code").to(device)
        schedule = dk.Schedule.spindle()

        def call_mask(inp: tuple[torch.Tensor, torch.Tensor], i: int) -> Any:
            ids, t = inp
            return dk.spindle_mask(ids, t, schedule, info, mask_id=MASK_ID, protected_ids=(0, 101, 102),
                                   seed=i, offset=i, backend=backend)
        return call_mask
    if case.op == "topk_unmask":
        k = case.shape2d[1] // 4

        def call_unmask(inp: tuple[torch.Tensor, ...], i: int) -> Any:
            ids, candidates, confidence = inp
            return dk.topk_unmask(ids, candidates, confidence, k, mask_id=MASK_ID, seed=i, offset=i,
                                  backend=backend)
        return call_unmask
    raise ValueError(f"unknown op {case.op!r}")


def timed_backends(device: torch.device) -> list[str]:
    """Backends to time on ``device``: all available ones, but never the Triton interpreter."""
    names = dk.available_backends(device)
    return [n for n in names if not (n == "triton" and device.type != "cuda")]


def run_kernel_case(
    case: KernelCase, device: torch.device, backends: Sequence[str], cfg: KernelConfig, copy_bps: float
) -> list[dict[str, Any]]:
    """Time ``case`` on each backend (same rotating inputs); one result dict per backend."""
    nbytes = bytes_moved(case)
    gen = torch.Generator(device=device).manual_seed(1234)
    count = rotation_count(nbytes, device)
    inputs = [_make_input(case, device, gen) for _ in range(count)]
    results = []
    for backend in backends:
        stats = time_calls(_caller(case, device, backend), inputs, device, warmup=cfg.warmup, repeats=cfg.repeats)
        bps = nbytes / stats.median_s
        results.append({
            **asdict(case), "backend": backend, **stats.as_dict(), "bytes": nbytes, "rotating_inputs": count,
            "bandwidth_GBps": bps / 1e9, "fraction_of_copy": bps / copy_bps,
        })
    ref = next((r for r in results if r["backend"] == "reference"), None)
    for r in results:
        r["speedup_vs_reference"] = ref["median_s"] / r["median_s"] if ref else None
    del inputs
    return results


def measure_copy(device: torch.device, cfg: KernelConfig) -> float:
    """The device-to-device copy bandwidth (bytes/s) of this run: the speed of light."""
    return copy_bandwidth(device, cfg.copy_bytes, warmup=max(cfg.warmup, 2), repeats=max(cfg.repeats, 5))


# --- Triton kernel table (the GPU script's kernel timings): the Triton sampling launcher, the
# reference path, torch.multinomial and a device-to-device copy of the same bytes, side by side.

TRITON_VARIANTS = (("T=1", 1.0, 0, 1.0), ("greedy", 0.0, 0, 1.0), ("top-k 30", 1.0, 30, 1.0),
                   ("top-p 0.9", 1.0, 0, 0.9), ("top-k 30 + top-p 0.9", 0.8, 30, 0.9))

TABLE_COLUMNS = ("copy_ms", "multinomial_ms", "reference_ms", "triton_ms", "triton_read_bandwidth_vs_copy",
                 "triton_vs_reference")


def _triton_caller(params: Any, prob: torch.Tensor, row_index: torch.Tensor,
                   device: torch.device) -> Callable[[torch.Tensor, int], Any]:
    """``fn(logits, i)``: the Triton sampling launcher (the kernel it picks by default) with
    ``params`` (no validation, seed 7, offset i)."""
    from dbert_kernels.random import rng_tensor
    from dbert_kernels.triton_backend.sampling import launch_sample

    def call(x: torch.Tensor, i: int) -> Any:
        return launch_sample(x, None, prob, params.banned, row_index, rng_tensor(7, i, device), -1,
                             params.inv_temperature, params.greedy, params.top_k, params.top_p, False, False)
    return call


def _variant_params(vocab: int, device: torch.device) -> list[tuple[str, Any]]:
    """(name, SamplingParams) of each :data:`TRITON_VARIANTS` entry, ``[CLS]``/``[SEP]``/``[MASK]`` banned."""
    from dbert_kernels.params import SamplingParams

    banned = torch.zeros(vocab, dtype=torch.bool, device=device)
    banned[[0, 101, 102, MASK_ID]] = True
    return [(name, SamplingParams.create(temperature=temperature, top_k=top_k or None,
                                         top_p=None if top_p >= 1 else top_p, banned=banned))
            for name, temperature, top_k, top_p in TRITON_VARIANTS]


def compile_rows(rows: int) -> int:
    """Rows of the launch that compiles the kernel of a ``rows``-row table: Triton specialises an
    integer argument on ``== 1`` and on divisibility by 16, so 16 (or 17) rows give the binary of
    any larger row count with the same property, at a fraction of the memory."""
    if rows <= 16:
        return rows
    return 16 if rows % 16 == 0 else 17


def _compile_one(task: tuple[str, int, int, str, int]) -> str:
    """Compile (by launching once on a few rows) one Triton sampling variant; returns an error or ''."""
    device_type, rows, vocab, dtype, index = task
    name = TRITON_VARIANTS[index][0]
    try:
        device = torch.device(device_type)
        params = _variant_params(vocab, device)[index][1]
        n = compile_rows(rows)
        x = torch.randn(n, vocab, device=device).to(_DTYPES[dtype])
        _triton_caller(params, torch.ones(n, device=device), torch.arange(n, device=device), device)(x, 0)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return ""
    except Exception as exc:  # reported by the caller; the timing run then shows the same error
        return f"{vocab} {dtype} {name}: {exc!r}"[:500]


class ShapeCompiler:
    """Compiles the Triton sampling kernel of each shape ``(vocab, dtype)`` in ``jobs`` processes,
    in the order of ``shapes``, into Triton's on-disk cache (``TRITON_CACHE_DIR``), where the timing
    process finds it; :meth:`wait` blocks until one shape's kernel is compiled, so the timings of a
    shape start as soon as it is ready while the next shapes compile (``jobs == 0``: nothing is
    compiled ahead; the first timed call compiles).

    One launch per shape compiles what every variant of :data:`TRITON_VARIANTS` runs: the kernel's
    options are run-time arguments, so the variants share one binary.
    """

    def __init__(self, shapes: Sequence[tuple[int, str]], rows: int, device: torch.device, jobs: int) -> None:
        self.futures: dict[tuple[int, str], list[Any]] = {}
        self.pool = None
        if jobs <= 0:
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(max(1, min(jobs, len(shapes))), mp_context=multiprocessing.get_context("spawn"))
        for vocab, dtype in shapes:  # submitted in order: the workers take the first shape first
            self.futures[(vocab, dtype)] = [self.pool.submit(_compile_one, (device.type, rows, vocab, dtype, 0))]

    def wait(self, vocab: int, dtype: str) -> tuple[float, list[str]]:
        """Seconds waited for the kernel of ``(vocab, dtype)`` and its compile errors."""
        import time

        start = time.perf_counter()
        errors = []
        for future in self.futures.pop((vocab, dtype), []):
            try:
                errors.append(future.result())
            except Exception as exc:  # a worker that died (e.g. out of memory)
                errors.append(f"{vocab} {dtype}: compile process failed: {exc!r}"[:500])
        if not self.futures:
            self.close()
        return time.perf_counter() - start, [e for e in errors if e]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None


def triton_sampling_table(rows: int, vocab: int, dtype: torch.dtype, device: torch.device,
                          warmup: int = 3, repeats: int = 15) -> Iterator[dict[str, Any]]:
    """Milliseconds per call of each sampler on ``[rows, vocab]`` logits of ``dtype``, one row per variant.

    Columns: ``copy`` (read + write of the logits' bytes, the speed of light of one read is half
    of it), ``multinomial`` (``softmax`` + ``torch.multinomial``, no filter), ``reference`` and
    ``triton`` (the launcher, with the kernel it picks by default). A sampler that fails gets NaN
    and its error in ``errors`` (the other columns are still measured).
    """
    from dbert_kernels import reference as ref

    gen = torch.Generator(device=device).manual_seed(0)
    nbytes = rows * vocab * torch.empty((), dtype=dtype).element_size()
    inputs = [(torch.randn(rows, vocab, device=device, generator=gen) * _LOGIT_SCALE).to(dtype)
              for _ in range(rotation_count(nbytes, device))]
    prob = torch.ones(rows, device=device)
    row_index = torch.arange(rows, device=device)
    copy_s = nbytes * 2 / copy_bandwidth(device, nbytes, warmup=warmup, repeats=repeats)
    multinomial = time_calls(lambda x, i: torch.multinomial(torch.softmax(x.float(), -1), 1), inputs, device,
                             warmup=warmup, repeats=repeats).median_s
    for name, params in _variant_params(vocab, device):
        row = {"case": f"sample {rows}x{vocab} {str(dtype)[6:]} {name}", "bytes": nbytes,
               "copy_ms": copy_s * 1e3, "multinomial_ms": multinomial * 1e3, "errors": []}
        for label, fn in (
            ("reference", lambda x, i, p=params: ref.sample(x, None, prob, row_index, -1, p, 7, i)),
            ("triton", _triton_caller(params, prob, row_index, device)),
        ):
            try:
                row[f"{label}_ms"] = time_calls(fn, inputs, device, warmup=warmup, repeats=repeats).median_s * 1e3
            except Exception as exc:  # one failing sampler must not lose the others' numbers
                row[f"{label}_ms"] = float("nan")
                row["errors"].append(f"{label}: {exc!r}"[:500])
        row["triton_read_bandwidth_vs_copy"] = copy_s / 2 / (row["triton_ms"] / 1e3)
        row["triton_vs_reference"] = row["reference_ms"] / row["triton_ms"]
        yield row


def table_markdown(title: str, meta: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    """The markdown of the Triton kernel table: one line per case, then the errors."""
    lines = [f"# {title}", "", f"{meta}", "",
             "| case | " + " | ".join(TABLE_COLUMNS) + " |", "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    lines += [f"| {r['case']} | " + " | ".join(f"{r[c]:.4g}" for c in TABLE_COLUMNS) + " |" for r in rows]
    errors = [f"- {r['case']}: {e}" for r in rows for e in r["errors"]]
    return "\n".join(lines + ([""] + errors if errors else [])) + "\n"


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.kernels --out DIR``: the Triton kernel table on the CUDA device (or, with
    ``--device cpu`` under ``TRITON_INTERPRET=1``, a rehearsal of the same code at tiny sizes)."""
    import argparse
    import json
    import os
    import platform
    import re
    import time
    from pathlib import Path

    import triton

    from .report import write_atomic

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--device", default="cuda",
                        help="cuda; cpu runs the kernels under the Triton interpreter (TRITON_INTERPRET=1): a rehearsal")
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--vocabs", default="30522,50257")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--compile-jobs", type=int, default=min(12, os.cpu_count() or 1),
                        help="processes that compile each shape's variants ahead of its timings, the next "
                             "shapes while one is timed (0: the first timed call compiles)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("python -m bench.kernels times the Triton kernels on a CUDA GPU; none is visible")
        card = torch.cuda.get_device_name()
        statistic = "median of CUDA-event times"
    else:
        if "triton" not in dk.available_backends(device):
            raise SystemExit(f"the Triton backend does not run on {device} here (set TRITON_INTERPRET=1 for the CPU)")
        card = "cpu_interpreter"
        statistic = "median of wall times under the Triton interpreter (a rehearsal: not a speed)"
    vocabs = [int(v) for v in args.vocabs.split(",")]
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    meta = {"device": card, "torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": "python -m bench.kernels " + " ".join(argv if argv is not None else sys.argv[1:]),
            "statistic": statistic, "rows": args.rows, "compile_jobs": args.compile_jobs,
            "compile_wait_s": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"triton_kernels_{re.sub(r'[^A-Za-z0-9]+', '_', card).strip('_')}"
    rows: list[dict[str, Any]] = []

    def write() -> None:  # after every row, so that a run cut short keeps what it measured
        write_atomic(stem.with_suffix(".json"), json.dumps({"meta": meta, "results": rows}, indent=2))
        write_atomic(stem.with_suffix(".md"), table_markdown(f"Triton sampling kernels on {card}", meta, rows))

    shapes = [(vocab, dtype) for vocab in vocabs for dtype in dtypes]
    compiler = ShapeCompiler(shapes, args.rows, device, args.compile_jobs)
    try:
        for vocab, dtype in shapes:
            waited, errors = compiler.wait(vocab, dtype)
            meta["compile_wait_s"][f"{vocab} {dtype}"] = round(waited, 1)
            if args.compile_jobs > 0:
                print(f"V={vocab} {dtype}: waited {waited:.1f} s for its variants to compile", flush=True)
            for e in errors:
                print("compile error:", e, flush=True)
            for r in triton_sampling_table(args.rows, vocab, _DTYPES[dtype], device, args.warmup, args.repeats):
                rows.append(r)
                write()
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
                      flush=True)
    finally:
        compiler.close()
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
