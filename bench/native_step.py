"""CPU denoising step: model time vs sampling time, naive / reference / native, and end to end.

Run (from the repository root; prints tables and writes ``runs/bench/native_step_cpu.json``, which
git ignores; the committed results in ``bench/results/`` are only written with an explicit
``--out bench/results/...``):

    python -m bench.native_step --threads 1   # full: 8.5 minutes at load average 4 to 7 on 2 cores
    python -m bench.native_step --quick       # smoke test, seconds (numbers are meaningless)
    python -m bench.native_step --threads 1 --sampling-only   # part 1's samplers only, about a minute

Every CPU number depends on the instruction set the native kernels were built for and picked at
load time: the JSON and the printed header name it (``native``), with the CPU model, its vector
flags and the load average before and after each part (other jobs on the machine slow every
column down, not necessarily alike).

What it measures, side by side in one process (medians over repeats; randomly initialised
weights, which is enough for timing):

1. One denoising step of a 6-layer, 384-hidden ``BertForMaskedLM`` (V = 30522) on a batch of
   16 x 64 tokens: the encoder plus the LM head on every row, and the sampling of that step's
   [1024, V] logits by (a) the naive PyTorch way (softmax, then ``torch.multinomial``), (b) the
   reference backend, (c) the native backend; the sampling share of a step is
   ``sample / (model + sample)``. The native backend is also timed with top-k = 30 and top-p =
   0.9 against the same naive sampler, interleaved (each round runs every sampler once, in a
   rotating order), with the per-round ratio naive / native.
2. The LM head only on the masked rows (``HFMaskedLMDenoiser`` with ``rows=``) against all rows,
   for the number of rows a 16-step generation reveals per step.
3. End to end: ``dbert_kernels.generate`` (posterior strategy, full-vocabulary sampling) at 8, 16,
   32 and 64 steps with the reference and the native backend, against a GPT-2 of the same size
   generating the same number of tokens with ``transformers``' ``generate`` (KV cache, sampling).
   The ratio DiffusionBERT / GPT-2 is reported per step count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import dbert_kernels as dk
from dbert_kernels import native

from .timing import TimedDenoiser, time_calls

MASK_ID = 103
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "runs" / "bench" / "native_step_cpu.json"
NAIVE = "naive (softmax + multinomial)"
#: The native sampler's settings timed against the naive sampler (temperature 1, fp32 logits).
NATIVE_SETTINGS: dict[str, dict[str, Any]] = {
    "full vocabulary": {}, "top-k 30": {"top_k": 30}, "top-p 0.9": {"top_p": 0.9},
}
#: The CPU flags that decide which kernels run (printed with the CPU model).
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl")


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    stats = time_calls(lambda _inp, _i: fn(), [None], torch.device("cpu"), warmup=warmup, repeats=repeats)
    return stats.median_s, [stats.p10_s, stats.median_s, stats.p90_s]


def interleaved_times(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each call over ``repeats`` rounds; each round calls every function once, the
    order rotating from round to round, so that a change of the machine's load hits all alike."""
    names = list(fns)
    for name in names:  # warm-up
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(repeats):
        for k in range(len(names)):
            name = names[(rnd + k) % len(names)]
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def cpu_description() -> dict[str, Any]:
    """The CPU model and which of :data:`VECTOR_FLAGS` it has (from /proc/cpuinfo on Linux)."""
    model, flags = platform.processor() or platform.machine(), None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == (platform.processor() or platform.machine()):
            model = value.strip()
        elif key.strip() == "flags" and flags is None:
            flags = set(value.split())
    vector = None if flags is None else {f: f in flags for f in VECTOR_FLAGS}
    return {"model": model, "vector_flags": vector}


def build_models(layers: int, hidden: int, vocab: int, gpt_vocab: int) -> tuple[Any, Any]:
    """Randomly initialised BertForMaskedLM and GPT2LMHeadModel of the same size, eval mode."""
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    heads = max(1, hidden // 64)
    bert = BertForMaskedLM(BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, max_position_embeddings=512,
    )).eval()
    gpt = GPT2LMHeadModel(GPT2Config(
        vocab_size=gpt_vocab, n_positions=1024, n_embd=hidden, n_layer=layers, n_head=heads,
        bos_token_id=gpt_vocab - 1, eos_token_id=gpt_vocab - 1,
    )).eval()
    return bert, gpt


@torch.no_grad()
def step_logits(bert: Any, batch: int, length: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """The denoiser, the step's token ids (half of them masked) and its logits on all rows."""
    den = dk.HFMaskedLMDenoiser(bert)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, bert.config.vocab_size, (batch, length), generator=gen)
    ids[torch.rand(batch, length, generator=gen) < 0.5] = MASK_ID
    return den, ids, den(ids, rows=torch.ones(batch, length, dtype=torch.bool))


@torch.no_grad()
def sampling_comparison(logits: torch.Tensor, repeats: int, backends: list[str],
                        reference: bool = True) -> dict[str, Any]:
    """The naive sampler against the native one in each of :data:`NATIVE_SETTINGS` (interleaved
    rounds), then the reference backend at full vocabulary (when asked for and available)."""
    load_before = os.getloadavg()
    naive = lambda: torch.multinomial(torch.softmax(logits, dim=-1), 1)  # noqa: E731
    samplers: dict[str, Callable[[], Any]] = {NAIVE: naive}
    if "native" in backends:
        for setting, opts in NATIVE_SETTINGS.items():
            samplers[f"native {setting}"] = lambda opts=opts: dk.sample(logits, seed=1, backend="native", **opts)
    rounds = interleaved_times(samplers, repeats)
    sampling = {name: statistics.median(times) for name, times in rounds.items()}
    speedup = {name: statistics.median(a / b for a, b in zip(rounds[NAIVE], times, strict=True))
               for name, times in rounds.items() if name != NAIVE}
    if reference and "reference" in backends:  # seconds per call here: two repeats are enough
        sampling["reference full vocabulary"], _ = _median_time(
            lambda: dk.sample(logits, seed=1, backend="reference"), min(repeats, 2))
    return {"sampling_s": sampling, "naive_over_native": speedup, "sampling_rounds_s": rounds,
            "loadavg_before": load_before, "loadavg_after": os.getloadavg()}


@torch.no_grad()
def step_breakdown(bert: Any, batch: int, length: int, repeats: int, backends: list[str]) -> dict[str, Any]:
    """Part 1 and 2: one step's model time against its sampling time."""
    den, ids, logits = step_logits(bert, batch, length)
    all_rows = torch.ones(batch, length, dtype=torch.bool)
    model_s, _ = _median_time(lambda: den(ids, rows=all_rows), repeats)
    gen = torch.Generator().manual_seed(1)
    sampling = sampling_comparison(logits, repeats, backends)
    # LM head only on the rows a 16-step generation reveals per step (about 1/16 of them)
    few = torch.zeros(batch * length, dtype=torch.bool)
    few[torch.randperm(batch * length, generator=gen)[: batch * length // 16]] = True
    few = few.view(batch, length)
    masked_rows_s, _ = _median_time(lambda: den(ids, rows=few), repeats)
    encoder_s, _ = _median_time(lambda: den.encoder(input_ids=ids).last_hidden_state, repeats)
    return {
        "batch": batch, "length": length, "rows": batch * length, "vocab": int(logits.shape[1]),
        "logits_mb": logits.numel() * logits.element_size() / 2**20,
        "model_all_rows_s": model_s, "encoder_only_s": encoder_s,
        "model_rows_per_16_step_s": masked_rows_s, "rows_per_16_step": int(few.sum()),
        **sampling,
        "sampling_share": {k: v / (model_s + v) for k, v in sampling["sampling_s"].items()},
    }


@torch.no_grad()
def end_to_end(bert: Any, gpt: Any, batch: int, length: int, steps_list: list[int], repeats: int,
               backends: list[str]) -> dict[str, Any]:
    """Part 3: DiffusionBERT generate per backend and step count, and GPT-2 generate.

    The runs are interleaved (each repeat runs GPT-2 and every configuration once), so that a
    change in the machine's load hits all of them alike.
    """
    from transformers import GenerationConfig

    eos = gpt.config.eos_token_id
    gen_cfg = GenerationConfig(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=length,
                               min_new_tokens=length, pad_token_id=eos, eos_token_id=eos, bos_token_id=eos)
    prompt = torch.full((batch, 1), eos, dtype=torch.long)
    timed = TimedDenoiser(dk.HFMaskedLMDenoiser(bert), torch.device("cpu"))

    def run_gpt() -> float:
        t0 = time.perf_counter()
        out = gpt.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=gen_cfg)
        if out.shape != (batch, length + 1):
            raise RuntimeError(f"GPT-2 generated {tuple(out.shape)}, expected {(batch, length + 1)}")
        return time.perf_counter() - t0

    def run_dbert(steps: int, name: str, seed: int) -> tuple[float, float]:
        timed.watch.reset()
        t0 = time.perf_counter()
        out = dk.generate(timed, mask_id=MASK_ID, batch_size=batch, seq_len=length, steps=steps,
                          seed=seed, progress=False, backend=name)
        elapsed = time.perf_counter() - t0
        if bool((out == MASK_ID).any()):
            raise RuntimeError("generation left [MASK] tokens: benchmark invalid")
        return elapsed, timed.watch.total_s()

    run_gpt()  # warm-up
    for name in backends:
        run_dbert(2, name, 0)
    gpt_all: list[float] = []
    runs: dict[tuple[int, str], list[tuple[float, float]]] = {(s, n): [] for s in steps_list for n in backends}
    for rep in range(repeats):
        gpt_all.append(run_gpt())
        for steps in steps_list:
            for name in backends:
                runs[(steps, name)].append(run_dbert(steps, name, rep))
                print(f"  repeat {rep}: generate steps={steps} backend={name}: "
                      f"{runs[(steps, name)][-1][0]:.2f} s", flush=True)
    gpt_s = statistics.median(gpt_all)
    rows = []
    for (steps, name), pairs in runs.items():
        times = [t for t, _ in pairs]
        med = statistics.median(times)
        share = statistics.median(1 - m / t for t, m in pairs)
        rows.append({"steps": steps, "backend": name, "median_s": med, "min_s": min(times), "all_s": times,
                     "ms_per_step": 1e3 * med / steps, "sampler_share": share,
                     "ratio_vs_gpt2": med / gpt_s, "ratio_vs_gpt2_min": min(times) / min(gpt_all)})
    return {"batch": batch, "tokens": length, "gpt2_kv_cache_s": gpt_s, "gpt2_min_s": min(gpt_all), "gpt2_all_s": gpt_all,
            "diffusionbert": rows}


def _machine() -> dict[str, Any]:
    return {
        "cpu": cpu_description(), "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "native": native.build_info(), "loadavg_start": os.getloadavg(),
        "note": "load averages: other jobs on the machine during the run slow every column down",
    }


def _header(machine: dict[str, Any]) -> str:
    cpu = machine["cpu"]
    flags = cpu["vector_flags"]
    has = "unknown flags" if flags is None else " ".join(f if ok else f"no-{f}" for f, ok in flags.items())
    load = " ".join(f"{v:.2f}" for v in machine["loadavg_start"])
    return (f"CPU: {cpu['model']} ({has}), {machine['cores']} cores; torch {machine['torch']}, "
            f"{machine['torch_threads']} threads\n{machine['native']}\nload average at start: {load}")


def _load(values: Any) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def _print_sampling(machine: dict[str, Any], st: dict[str, Any]) -> None:
    print(f"native: {machine['native']}; load average before / after the sampling part: "
          f"{_load(st['loadavg_before'])} / {_load(st['loadavg_after'])}")
    print("| sampler | sampling ms | share of a step | naive / native (median of rounds) |\n|---|---|---|---|")
    for name, sec in st["sampling_s"].items():
        ratio = st["naive_over_native"].get(name)
        share = st.get("sampling_share", {}).get(name)
        print(f"| {name} | {sec * 1e3:.1f} | {'' if share is None else f'{100 * share:.1f}%'} | "
              f"{'' if ratio is None else f'{ratio:.1f}x'} |")


def _print_tables(res: dict[str, Any]) -> None:
    st = res["step"]
    print(f"\nOne step, batch {st['batch']} x {st['length']} tokens, V = {st['vocab']} "
          f"(logits {st['logits_mb']:.0f} MiB)")
    print(f"model (encoder + LM head on all {st['rows']} rows): {st['model_all_rows_s'] * 1e3:.0f} ms; "
          f"encoder only {st['encoder_only_s'] * 1e3:.0f} ms; LM head on {st['rows_per_16_step']} rows "
          f"(a 16-step generation's step): {st['model_rows_per_16_step_s'] * 1e3:.0f} ms")
    _print_sampling(res["machine"], st)
    e2e = res["e2e"]
    print(f"\nEnd to end, batch {e2e['batch']} x {e2e['tokens']} tokens; GPT-2 (KV cache): "
          f"median {e2e['gpt2_kv_cache_s']:.2f} s, min {e2e['gpt2_min_s']:.2f} s")
    print("| steps | backend | DiffusionBERT median s (min) | ms/step | sampler share | "
          "DiffusionBERT / GPT-2 median (min) |")
    print("|---|---|---|---|---|---|")
    for row in e2e["diffusionbert"]:
        print(f"| {row['steps']} | {row['backend']} | {row['median_s']:.2f} ({row['min_s']:.2f}) | "
              f"{row['ms_per_step']:.0f} | {100 * row['sampler_share']:.1f}% | "
              f"{row['ratio_vs_gpt2']:.2f} ({row['ratio_vs_gpt2_min']:.2f}) |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each step measurement")
    parser.add_argument("--e2e-repeats", type=int, default=2, help="timed repeats of each generation")
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch / native threads (0: torch's default); 1 is the stable setting on a "
                             "machine shared with other jobs")
    parser.add_argument("--sampling-only", action="store_true",
                        help="only the naive / native sampling comparison on one step's logits (no model "
                             "timings, no reference, no end to end): about a minute")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON output (default: runs/bench/native_step_cpu.json, ignored by git; "
                             "bench/results/ only when named here)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the JSON, print the tables; returns the results."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        layers, hidden, vocab, gpt_vocab, batch, length, steps = 2, 64, 4096, 4096, 2, 16, [2, 4]
        args.repeats, args.e2e_repeats = 1, 1
    else:
        layers, hidden, vocab, gpt_vocab, batch, length, steps = 6, 384, 30522, 50257, 16, 64, args.steps
    backends = [b for b in ("reference", "native") if b in dk.available_backends("cpu")]
    bert, gpt = build_models(layers, hidden, vocab, gpt_vocab)
    res: dict[str, Any] = {"machine": _machine(), "config": {
        "layers": layers, "hidden": hidden, "vocab": vocab, "gpt_vocab": gpt_vocab, "batch": batch,
        "tokens": length, "steps": steps, "repeats": args.repeats, "e2e_repeats": args.e2e_repeats,
        "sampling": "temperature 1, fp32 logits; generate: full vocabulary (no top-k / top-p)"}}
    print(_header(res["machine"]), flush=True)
    if args.sampling_only:
        _, _, logits = step_logits(bert, batch, length)
        res["sampling"] = sampling_comparison(logits, args.repeats, backends, reference=False)
        _print_sampling(res["machine"], res["sampling"])
    else:
        res["step"] = step_breakdown(bert, batch, length, args.repeats, backends)
        print(json.dumps({k: v for k, v in res["step"].items() if k != "sampling_rounds_s"}, indent=1),
              flush=True)
        res["machine"]["loadavg_before_e2e"] = os.getloadavg()
        res["e2e"] = end_to_end(bert, gpt, batch, length, steps, args.e2e_repeats, backends)
    res["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    if not args.sampling_only:
        _print_tables(res)
    print(f"\nwritten to {args.out}")
    return res


if __name__ == "__main__":
    main()
