"""CPU denoising step: model time vs sampling time, naive / reference / native, and end to end.

Run (from the repository root; writes ``bench/results/native_step_cpu.json`` and prints tables):

    python -m bench.native_step            # full: ~10 minutes on 2 idle cores
    python -m bench.native_step --quick    # smoke test, seconds (numbers are meaningless)

What it measures, side by side in one process (medians over repeats; randomly initialised
weights, which is enough for timing):

1. One denoising step of a 6-layer, 384-hidden ``BertForMaskedLM`` (V = 30522) on a batch of
   16 x 64 tokens: the encoder plus the LM head on every row, and the sampling of that step's
   [1024, V] logits by (a) the naive PyTorch way (softmax, then ``torch.multinomial``), (b) the
   reference backend, (c) the native backend; the sampling share of a step is
   ``sample / (model + sample)``.
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
RESULTS = Path(__file__).resolve().parent / "results"


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    stats = time_calls(lambda _inp, _i: fn(), [None], torch.device("cpu"), warmup=warmup, repeats=repeats)
    return stats.median_s, [stats.p10_s, stats.median_s, stats.p90_s]


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
def step_breakdown(bert: Any, batch: int, length: int, repeats: int, backends: list[str]) -> dict[str, Any]:
    """Part 1 and 2: one step's model time against its sampling time."""
    den = dk.HFMaskedLMDenoiser(bert)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, bert.config.vocab_size, (batch, length), generator=gen)
    ids[torch.rand(batch, length, generator=gen) < 0.5] = MASK_ID
    all_rows = torch.ones(batch, length, dtype=torch.bool)
    model_s, _ = _median_time(lambda: den(ids, rows=all_rows), repeats)
    logits = den(ids, rows=all_rows)
    sampling: dict[str, float] = {}
    naive = lambda: torch.multinomial(torch.softmax(logits, dim=-1), 1)  # noqa: E731
    sampling["naive (softmax + multinomial)"], _ = _median_time(naive, repeats)
    for name in backends:  # the reference takes seconds here: two repeats are enough
        reps = min(repeats, 2) if name == "reference" else repeats
        sampling[name], _ = _median_time(lambda name=name: dk.sample(logits, seed=1, backend=name), reps)
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
        "sampling_s": sampling,
        "sampling_share": {k: v / (model_s + v) for k, v in sampling.items()},
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
        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "native": native.build_info(), "loadavg_start": os.getloadavg(),
        "note": "shared 2-core machine (other jobs ran at the same time): medians, noisy",
    }


def _print_tables(res: dict[str, Any]) -> None:
    st = res["step"]
    print(f"\nOne step, batch {st['batch']} x {st['length']} tokens, V = {st['vocab']} "
          f"(logits {st['logits_mb']:.0f} MiB)")
    print(f"model (encoder + LM head on all {st['rows']} rows): {st['model_all_rows_s'] * 1e3:.0f} ms; "
          f"encoder only {st['encoder_only_s'] * 1e3:.0f} ms; LM head on {st['rows_per_16_step']} rows "
          f"(a 16-step generation's step): {st['model_rows_per_16_step_s'] * 1e3:.0f} ms")
    print("| sampler | sampling ms | share of a step |\n|---|---|---|")
    for name, sec in st["sampling_s"].items():
        print(f"| {name} | {sec * 1e3:.1f} | {100 * st['sampling_share'][name]:.1f}% |")
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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the JSON, print the tables; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each step measurement")
    parser.add_argument("--e2e-repeats", type=int, default=2, help="timed repeats of each generation")
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--threads", type=int, default=0,
                        help="torch / native threads (0: torch's default); 1 is the stable setting on a "
                             "machine shared with other jobs")
    parser.add_argument("--out", type=Path, default=RESULTS / "native_step_cpu.json")
    args = parser.parse_args(argv)
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
        "sampling": "temperature 1, full vocabulary (no top-k / top-p), fp32 logits"}}
    res["step"] = step_breakdown(bert, batch, length, args.repeats, backends)
    print(json.dumps(res["step"], indent=1), flush=True)
    res["e2e"] = end_to_end(bert, gpt, batch, length, steps, args.e2e_repeats, backends)
    res["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    _print_tables(res)
    print(f"\nwritten to {args.out}")
    return res


if __name__ == "__main__":
    main()
