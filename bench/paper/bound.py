"""``python -m bench.paper.bound``: is the authors' spindle posterior a proper bound?

A masked-diffusion NELBO scores token i at every step t where it is masked, with weight
``P(masked at t) * r_i(t)`` (``r_i``: the posterior probability of revealing it at the step
before). Summed over the steps, each token's total weight must be 1: it is revealed exactly once.

* The exact posterior of the per-token forward process, ``r = (keep_s - keep_t) / (1 - keep_t)``,
  telescopes to ``keep_i(0) - keep_i(T)``: 1 (0.999 for the code-form spindle, whose keep is
  clipped at 0.999 at t = 0).
* The authors' rule (:func:`dbert_model.losses.authors_reveal_probability`: per-token keep times
  the sentence-level beta) gives totals below 1 for rare tokens and above 1 for frequent ones;
  their first step (t = step) scores the CE with weight 1, as their code does.

The script prints, for a schedule and T (and an ELBO step size, the authors' ``eval_step_size``):

1. the total weight per token class (``w_i - mean_j w_j`` of the code form) under both rules;
2. the NELBO per real token of the built-in test split under both rules with unigram surprisal
   ``-log freq`` (training-split counts, add-one) standing in for the model's CE (CE then does
   not depend on t, so the NELBO is ``sum_i W_i CE_i`` exactly), and the resulting perplexity factor;
3. with ``--checkpoint``: the same two NELBOs for a trained model, Monte Carlo over (t, mask)
   with shared draws, and the paired standard error of their difference.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dbert_kernels import Schedule

__all__ = ["weight_totals", "class_table", "unigram_gap", "model_gap", "main"]


def weight_totals(
    schedule: Schedule, info: torch.Tensor, real: torch.Tensor, step: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Total NELBO weight per position ``(exact, authors)``, both ``[N, L]`` float64.

    ``info``: ``[N, L]`` token information per position (the schedule's form); ``real``: ``[N, L]``
    bool, the positions of the spindle mean (the others get 0). ``step``: ELBO stride (T must be a
    multiple of it): terms at t = step, 2 step, ..., T, each revealing to t - step.
    """
    T = int(schedule.T)
    if T != schedule.T or step < 1 or T % step:
        raise ValueError(f"T ({schedule.T}) must be an integer multiple of step ({step})")
    info = info.to(torch.float32)
    n = info.shape[0]
    exact = torch.zeros(info.shape, dtype=torch.float64)
    authors = torch.zeros(info.shape, dtype=torch.float64)
    from dbert_model.losses import authors_reveal_probability

    def keep(t: float) -> tuple[torch.Tensor, torch.Tensor]:
        tt = torch.full((n,), float(t), dtype=torch.float64)
        return schedule.token_alphabar(tt, info, real).double(), schedule.alphabar(tt)[:, None]

    keep_s, ab_s = keep(0)
    for k in range(1, T // step + 1):
        keep_t, ab_t = keep(k * step)
        masked = 1.0 - keep_t
        exact += (keep_s - keep_t).clamp_min(0.0)
        r = torch.ones_like(keep_t) if k == 1 else authors_reveal_probability(keep_s, ab_s, ab_t)
        authors += masked * r
        keep_s, ab_s = keep_t, ab_t
    zero = torch.zeros((), dtype=torch.float64)
    return torch.where(real, exact, zero), torch.where(real, authors, zero)


def class_table(schedule: Schedule, deviations: Sequence[float], step: int = 1) -> list[dict[str, float]]:
    """Total weights of a token whose code-form information lies ``d`` above its sentence mean."""
    if schedule.is_spindle and schedule.spindle_form != "code":
        raise ValueError("the per-class table is defined for the code form (w - mean); use --form code")
    d = torch.tensor(list(deviations), dtype=torch.float32)
    info = torch.stack([0.5 + d, 0.5 - d], dim=1)  # a two-token sentence with mean 0.5
    real = torch.ones(info.shape, dtype=torch.bool)
    exact, authors = weight_totals(schedule, info, real, step)
    return [{"w_minus_mean": float(x), "exact": float(e), "authors": float(a)}
            for x, e, a in zip(d, exact[:, 0], authors[:, 0], strict=True)]


def _test_split(data: str, max_len: int, tokenizer: Any) -> tuple[Any, torch.Tensor]:
    from dbert_model import encode, load_corpus, token_counts
    from dbert_model.bench_api import whole_sentences

    corpus = load_corpus(data)
    vocab = len(tokenizer.get_vocab())
    counts = token_counts(encode(tokenizer, corpus.train, max_len).ids, vocab, tokenizer.pad_token_id)
    test = encode(tokenizer, whole_sentences(tokenizer, corpus.test or corpus.valid, max_len), max_len)
    return test, counts


def unigram_gap(schedule: Schedule, *, data: str = "builtin", max_len: int = 64, step: int = 1,
                tokenizer: Any = None) -> dict[str, float]:
    """NELBO per real token of the test split under both rules, unigram surprisal as the CE."""
    from dbert_kernels import token_information
    from dbert_model import load_tokenizer
    from dbert_model.losses import token_classes
    from dbert_model.settings import DiffusionSettings
    from dbert_model.tokenizer import special_ids

    tokenizer = tokenizer or load_tokenizer()
    test, counts = _test_split(data, max_len, tokenizer)
    settings = DiffusionSettings(special_ids=special_ids(tokenizer), vocab_size=counts.numel())
    real, _ = token_classes(test.ids, settings)
    info = token_information(counts, schedule.spindle_form)[test.ids]
    exact, authors = weight_totals(schedule, info, real, step)
    real_counts = counts.clone().double()
    for name in ("cls", "sep", "pad"):
        real_counts[settings.special_ids[name]] = 0.0
    surprisal = -torch.log((real_counts + 1.0) / (real_counts.sum() + real_counts.numel()))[test.ids]
    n_real = int(real.sum())
    nelbo_exact = float((exact * surprisal).sum()) / n_real
    nelbo_authors = float((authors * surprisal).sum()) / n_real
    gap = nelbo_authors - nelbo_exact
    return {
        "sentences": len(test), "real_tokens": n_real, "words": float(test.words.sum()),
        "mean_weight_exact": float(exact.sum()) / n_real, "mean_weight_authors": float(authors.sum()) / n_real,
        "nelbo_per_token_exact": nelbo_exact, "nelbo_per_token_authors": nelbo_authors,
        "gap_per_token": gap, "ppl_factor_per_token": math.exp(gap),
        "ppl_factor_per_word": math.exp(gap * n_real / float(test.words.sum())),
    }


@torch.no_grad()
def model_gap(checkpoint: str | Path, *, data: str = "builtin", draws: int = 2, batch_size: int = 64,
              max_sentences: int | None = 512, seed: int = 0) -> dict[str, float]:
    """Monte Carlo NELBO per real token of a checkpoint under both rules (same draws)."""
    from dbert_model import load_checkpoint
    from dbert_model.losses import authors_reveal_probability, forward_mask, keep_probabilities, token_classes

    loaded = load_checkpoint(checkpoint, device="cpu")
    model, settings = loaded.model.eval(), loaded.settings
    schedule = settings.build_schedule()
    T = int(settings.T)
    if T != settings.T:
        raise ValueError(f"the checkpoint's T ({settings.T}) must be an integer for the discrete-time bound")
    test, _ = _test_split(data, settings.max_len, loaded.tokenizer)
    ids_all = test.ids[:max_sentences] if max_sentences else test.ids
    info_v = loaded.token_info() if schedule.is_spindle else None
    per_sentence: list[torch.Tensor] = []
    offset = 0
    for _ in range(draws):
        for start in range(0, ids_all.shape[0], batch_size):
            ids = ids_all[start : start + batch_size]
            gen = torch.Generator().manual_seed(seed * 1_000_003 + offset)
            b = ids.shape[0]
            u = (torch.arange(b, dtype=torch.float64) + torch.rand(b, generator=gen, dtype=torch.float64)) / b
            t = (torch.floor(u * T) + 1).clamp(1, T)
            _, masked = forward_mask(ids, t, settings, info_v, seed=seed, offset=offset)
            noised = torch.where(masked, torch.full_like(ids, settings.special_ids["mask"]), ids)
            offset += 1
            real, noisable = token_classes(ids, settings)
            info = info_v[ids] if info_v is not None else torch.zeros(ids.shape)
            k_t = keep_probabilities(schedule, t, info, real, noisable).double()
            k_s = keep_probabilities(schedule, t - 1, info, real, noisable).double()
            r_exact = ((k_s - k_t) / (1.0 - k_t).clamp_min(1e-12)).clamp(0.0, 1.0)
            ab_t, ab_s = schedule.alphabar(t)[:, None], schedule.alphabar(t - 1)[:, None]
            r_auth = torch.where(t[:, None] == 1, torch.ones_like(k_s), authors_reveal_probability(k_s, ab_s, ab_t))
            sel = masked & real
            logits = model(noised, t=t.float(), rows=sel)
            ce = torch.nn.functional.cross_entropy(logits.float(), ids[sel], reduction="none").double()
            row = sel.nonzero()[:, 0]
            both = torch.zeros(b, 2, dtype=torch.float64)
            both.index_add_(0, row, torch.stack([r_exact[sel] * ce, r_auth[sel] * ce], dim=1) * T)
            per_sentence.append(both)
    sums = torch.cat(per_sentence)  # [draws * N, 2]
    n_real = int(token_classes(ids_all, settings)[0].sum()) * draws
    diff = sums[:, 1] - sums[:, 0]
    n = diff.numel()
    return {
        "checkpoint": str(checkpoint), "T": T, "draws": draws, "sentences": int(ids_all.shape[0]),
        "nelbo_per_token_exact": float(sums[:, 0].sum()) / n_real,
        "nelbo_per_token_authors": float(sums[:, 1].sum()) / n_real,
        "gap_per_token": float(diff.sum()) / n_real,
        "gap_per_token_se": float(diff.std() * math.sqrt(n)) / n_real,
        "ppl_factor_per_token": math.exp(float(diff.sum()) / n_real),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.paper.bound", description=__doc__.split("\n")[0])
    p.add_argument("--T", type=int, default=2048, help="diffusion steps (the authors' 2048)")
    p.add_argument("--lam", type=float, default=0.3, help="spindle lambda (the authors' 0.3)")
    p.add_argument("--form", choices=("code", "paper"), default="code", help="spindle form")
    p.add_argument("--step", type=int, default=1, help="ELBO step size (T must be a multiple)")
    p.add_argument("--classes", default="-0.6,-0.4,-0.2,0,0.2,0.4,0.6", help="w - mean values of the class table")
    p.add_argument("--data", default="builtin", help="corpus of the unigram stand-in (see dbert_model.load_corpus)")
    p.add_argument("--max-len", type=int, default=64, help="sequence length of the unigram stand-in")
    p.add_argument("--no-unigram", action="store_true", help="skip the unigram stand-in")
    p.add_argument("--checkpoint", default=None, help="also measure a trained dbert checkpoint (its own T)")
    p.add_argument("--draws", type=int, default=2, help="Monte Carlo draws per sentence for --checkpoint")
    p.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    try:
        schedule = Schedule.spindle(args.lam, args.form, float(args.T))
        deviations = [float(x) for x in args.classes.split(",")]
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    out: dict[str, Any] = {"T": args.T, "lam": args.lam, "form": args.form, "step": args.step}
    print(f"spindle lambda={args.lam} ({args.form} form), T={args.T}, ELBO step {args.step}")
    if args.form == "code":
        out["classes"] = class_table(schedule, deviations, args.step)
        print("\n| w - mean | total weight, exact posterior | total weight, authors' rule |\n|---|---|---|")
        for row in out["classes"]:
            print(f"| {row['w_minus_mean']:+.2f} | {row['exact']:.4f} | {row['authors']:.4f} |")
    if not args.no_unigram:
        u = out["unigram"] = unigram_gap(schedule, data=args.data, max_len=args.max_len, step=args.step)
        print(f"\nunigram stand-in on the {args.data} test split ({u['sentences']} sentences, {u['real_tokens']} real "
              f"tokens): mean total weight exact {u['mean_weight_exact']:.4f}, authors {u['mean_weight_authors']:.4f}; "
              f"NELBO/token exact {u['nelbo_per_token_exact']:.3f}, authors {u['nelbo_per_token_authors']:.3f} nats: "
              f"gap {u['gap_per_token']:+.3f} nats/token, perplexity factor x{u['ppl_factor_per_token']:.3f} "
              f"per token (x{u['ppl_factor_per_word']:.3f} per word)")
    if args.checkpoint:
        m = out["model"] = model_gap(args.checkpoint, data=args.data, draws=args.draws)
        print(f"\nmodel {m['checkpoint']} (its T = {m['T']}, {m['sentences']} sentences x {m['draws']} draws): "
              f"NELBO/token exact {m['nelbo_per_token_exact']:.3f}, authors {m['nelbo_per_token_authors']:.3f}: "
              f"gap {m['gap_per_token']:+.3f} +- {m['gap_per_token_se']:.3f} nats/token "
              f"(perplexity factor x{m['ppl_factor_per_token']:.3f})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
