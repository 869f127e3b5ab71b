"""The ``dbert`` command: ``dbert train``, ``dbert generate``, ``dbert demo``, ``dbert eval``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (``dbert CMD: error: ...``), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _add_sampling(p: argparse.ArgumentParser) -> None:
    """The decoding flags: the sampling settings (defaults from :data:`dbert_model.arch.DEFAULT_SAMPLING`),
    the strategy (choices from the registry :data:`dbert_kernels.STRATEGIES`, read when the parser
    is built, so a strategy registered before appears) and its options (:data:`dbert_kernels.OPTIONS`:
    a flag left out keeps the strategy's default, and a flag the strategy does not take is refused)."""
    from dbert_kernels import DEFAULT_STRATEGY, OPTIONS, STRATEGIES, backend_names

    from .arch import DEFAULT_SAMPLING as d

    p.add_argument("--steps", type=_positive_int, default=64, help="denoising steps (default 64)")
    p.add_argument("--strategy", choices=tuple(STRATEGIES), default=DEFAULT_STRATEGY,
                   help="; ".join(f"{name}: {spec.help}" for name, spec in STRATEGIES.items())
                   + f" (default {DEFAULT_STRATEGY}; see docs/decoding.md)")
    p.add_argument("--temperature", type=float, default=d.temperature, help=f"default {d.temperature}")
    p.add_argument("--top-k", type=int, default=d.top_k, help=f"top-k filter (default {d.top_k}, the paper's; 0 = off)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="nucleus filter in (0, 1] (default off)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"default {d.seed}")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--backend", default=d.backend,
                   help=f"sampling-op backend: {', '.join(backend_names())} (default {d.backend})")
    for name, opt in OPTIONS.items():
        if opt.cli:  # choices are checked by _check_decoding: a bad value is one line naming the flag
            p.add_argument("--" + name.replace("_", "-"), type=opt.type, default=None,
                           metavar="{" + ",".join(opt.choices) + "}" if opt.choices else None,
                           help=f"{opt.help} (default {opt.default})")


def build_parser() -> argparse.ArgumentParser:
    from dbert_kernels import CACHE_MODES

    from .arch import architecture_names
    from .settings import (
        HYBRID_CE_SETS,
        LOSS_NORMS,
        LOSSES,
        SCHEDULES,
        TIME_DESIGNS,
        TIME_INITS,
        TRAIN_DEFAULT_TIME,
    )
    from .train import TrainConfig

    d = TrainConfig()
    ds = d.diffusion
    parser = _Parser(prog="dbert", description="DiffusionBERT: train, generate, evaluate.")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch CPU threads (default: OMP_NUM_THREADS if set, else one per core left free by "
                        "the load average, see dbert_kernels.threads); give it before the command: "
                        "dbert --threads 1 generate")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train or resume a DiffusionBERT", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Train a DiffusionBERT (resumes when --out holds a checkpoint). The defaults "
                       f"fine-tune MiniLM on the built-in corpus for {d.max_steps} steps of {d.batch_size} sentences: "
                       f"{TRAIN_DEFAULT_TIME} on a 2-core CPU (the run prints its ETA after a few steps). "
                       "The paper's recipe: --config recipes/bert-base-lm1b.json (a GPU run).")
    t.add_argument("--config", default=None,
                   help="a JSON training configuration (TrainConfig.to_json form); flags given as well override it")
    t.add_argument("--out", default=d.out, help="checkpoint directory")
    t.add_argument("--arch", choices=architecture_names(), default=d.arch,
                   help="diffusion (DiffusionBERT) or gpt2 (the autoregressive baseline, shaped like --init's BERT)")
    t.add_argument("--data", default=d.data, help="'builtin' or a corpus path (text file, dir with train.txt, saved dataset)")
    t.add_argument("--init", default=d.init, help="minilm (pretrained), scratch, tiny, bert-base, or a local model dir")
    t.add_argument("--tokenizer", default=None, help="tokenizer dir or vocab.txt (default: the init model's / MiniLM's)")
    t.add_argument("--time-design", choices=TIME_DESIGNS, default=ds.time_design)
    t.add_argument("--schedule", choices=SCHEDULES, default=ds.schedule)
    t.add_argument("--T", type=float, default=ds.T, help="diffusion steps of the forward process")
    t.add_argument("--lambda", type=float, default=ds.spindle_lambda, help="spindle amplitude lambda")
    t.add_argument("--spindle-form", choices=("code", "paper"), default=ds.spindle_form)
    t.add_argument("--loss", choices=LOSSES, default=ds.loss)
    t.add_argument("--hybrid-lambda", type=float, default=ds.hybrid_lambda)
    t.add_argument("--hybrid-ce", choices=HYBRID_CE_SETS, default=ds.hybrid_ce,
                   help="hybrid CE positions: masked only, or all non-pad (the authors')")
    t.add_argument("--loss-norm", choices=LOSS_NORMS, default=ds.loss_norm,
                   help="loss per noisable token, or per sentence (the authors')")
    t.add_argument("--time-init", choices=TIME_INITS, default=ds.time_init,
                   help="LTE/PTE time MLP init: normal (the authors') or zero (starts as TAD)")
    t.add_argument("--max-len", type=int, default=ds.max_len)
    t.add_argument("--batch-size", type=int, default=d.batch_size)  # train values: checked by TrainConfig
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--warmup", type=int, default=d.warmup_steps,
                   help="linear warm-up steps (one not shorter than --steps is clipped to a tenth of the run)")
    t.add_argument("--steps", type=int, default=d.max_steps, help="total optimiser steps")
    t.add_argument("--minutes", type=float, default=None, help="stop after this many minutes")
    t.add_argument("--grad-clip", type=float, default=d.grad_clip)
    t.add_argument("--eval-every", type=int, default=d.eval_every)
    t.add_argument("--eval-sentences", type=int, default=d.eval_sentences)
    t.add_argument("--save-every", type=int, default=d.save_every)
    t.add_argument("--log-every", type=int, default=d.log_every)
    t.add_argument("--sample-every", type=int, default=0, help="print 2 samples every N steps (0: never)")
    t.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help="micro-batches per optimiser step (the global --batch-size is split into them)")
    t.add_argument("--max-train-sentences", type=int, default=None)
    t.add_argument("--seed", type=int, default=d.seed)
    t.add_argument("--device", default=d.device)
    t.add_argument("--backend", default=d.backend)
    t.add_argument("--bf16", action="store_true", help="bfloat16 autocast (mixed precision, for GPUs)")
    t.add_argument("--no-resume", action="store_true", help="refuse to continue an existing checkpoint")
    t.add_argument("--overwrite", action="store_true",
                   help="use an --out that exists and is not a checkpoint (its files are kept); with --no-resume, "
                   "start over in an existing checkpoint directory")
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--count-special-tokens", action=argparse.BooleanOptionalAction, default=d.count_special_tokens,
                   help="count [CLS] / [SEP] in the token counts of the spindle information (--no-count-special-"
                   "tokens: the authors' word_freq.py counts)")
    for action in t._actions:  # --help shows every default, also of the flags without a description
        if action.help is None and action.option_strings:
            action.help = "default: %(default)s"

    g = sub.add_parser("generate", help="sample sentences",
                       description="Generate sentences from all-[MASK]. Without --model, uses (and on first use "
                       "trains, a few CPU minutes) a small demo model fine-tuned from MiniLM.")
    g.add_argument("--model", default=None, help="checkpoint directory (default: the cached demo model)")
    g.add_argument("--rebuild-demo", action="store_true",
                   help="train the demo model again before sampling (without --model; see `dbert demo`)")
    g.add_argument("-n", "--num", type=_positive_int, default=4, help="number of sentences")
    g.add_argument("--seq-len", type=_positive_int, default=None, help="length incl. [CLS] (default: training length)")
    g.add_argument("--tokenizer", default=None, help="check / use this tokenizer (must match the checkpoint)")
    g.add_argument("--show-ids", action="store_true", help="also print the token ids")
    g.add_argument("--no-progress", action="store_true")
    _add_sampling(g)
    g.add_argument("--block-length", type=int, default=None, help="decode left-to-right blocks of this many positions")
    g.add_argument("--cache", choices=CACHE_MODES, default=None, help="block key/value cache (needs --block-length)")
    g.add_argument("--refresh-every", type=int, default=None, help="recompute the cache every N calls (default: per block)")
    g.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale (default off)")
    g.add_argument("--sentence-level", action="store_true",
                   help="spindle checkpoints: reveal with the sentence-level alphabar instead of the per-token schedule")
    g.add_argument("--early-stop", action="store_true", help="fill a row with [PAD] once its [SEP] has nothing masked before it")
    g.add_argument("--show-steps", action="store_true", help="print the canvas after every step (revealed tokens in *stars*)")

    dm = sub.add_parser("demo", help="train (or rebuild) the demo model that `dbert generate` uses without --model",
                        description="Train the demo model (MiniLM fine-tuned on the built-in corpus for a fixed number "
                        "of steps, a few CPU minutes) into the cache, unless it is there already; prints its path.")
    dm.add_argument("--rebuild", action="store_true", help="delete the cached demo model and train it again")
    e = sub.add_parser("eval", help="ELBO perplexity, BLEU-4 and Self-BLEU",
                       description="Evaluate a checkpoint: ELBO perplexity per word on held-out data (exact perplexity "
                       "for a GPT-2 baseline), BLEU-4 of samples against the test set, Self-BLEU among samples, and with "
                       "--judge the judge's scores of the samples.")
    e.add_argument("--model", default=None, help="checkpoint directory (default: the cached demo model)")
    e.add_argument("--data", default=None, help="corpus (default: the one the checkpoint was trained on)")
    e.add_argument("--split", choices=("valid", "test"), default="test")
    e.add_argument("--elbo-samples", type=_positive_int, default=1, help="Monte Carlo (t, mask) draws per sentence")
    e.add_argument("--max-sentences", type=_positive_int, default=None, help="evaluate on the first N sentences")
    e.add_argument("--batch-size", type=_positive_int, default=32)
    e.add_argument("--samples", type=_non_negative_int, default=64, help="generated sentences for BLEU / Self-BLEU (0: skip)")
    e.add_argument("--paper-metrics", action="store_true",
                   help="also Table 2's metrics: the 128-step bound over real tokens, BLEU / Self-BLEU of "
                   "128-step samples as the authors' mean of per-sample scores and pooled")
    e.add_argument("--judge", default=None, help="GPT-2 checkpoint (dbert train --arch gpt2) that scores the samples: "
                   "generative perplexity, distinct-1/2/3, repetition")
    e.add_argument("--json", action="store_true", help="print the results as JSON")
    e.add_argument("--no-progress", action="store_true")
    _add_sampling(e)
    return parser


def train_config(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` of parsed ``dbert train`` arguments (flags that name a
    :class:`DiffusionSettings` field go to ``TrainConfig.diffusion``)."""
    from .settings import TRAIN_FLAGS, DiffusionSettings
    from .train import TrainConfig

    own = {f.name for f in fields(TrainConfig)} - {"diffusion"}
    diffusion_fields = {f.name for f in fields(DiffusionSettings)}
    values: dict[str, Any] = {}
    diffusion: dict[str, Any] = {}
    for key, value in vars(args).items():
        name = TRAIN_FLAGS.get(key, key)
        if name in diffusion_fields:
            diffusion[name] = value
        elif name in own:
            values[name] = value
    values["resume"] = not args.no_resume
    values["progress"] = not args.no_progress
    return TrainConfig(**values, diffusion=DiffusionSettings(**diffusion))


def _config_file_defaults(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    """``dbert train --config FILE``: the file's values become the defaults of the train flags."""
    from .settings import TRAIN_FLAGS
    from .train import TrainConfig

    args, _ = parser.parse_known_args(argv)
    if getattr(args, "command", None) != "train" or not getattr(args, "config", None):
        return
    path = Path(args.config)
    try:
        cfg = TrainConfig.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as exc:
        parser.exit(2, f"dbert train: error: --config {path}: {' '.join(str(exc).split())}\n")
    flags = {v: k for k, v in TRAIN_FLAGS.items()}
    values = {**{k: v for k, v in cfg.to_json().items() if k != "diffusion"}, **cfg.to_json()["diffusion"]}
    train_parser = parser._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    train_parser.set_defaults(**{flags.get(k, k): v for k, v in values.items()})
    train_parser.set_defaults(no_resume=not cfg.resume, no_progress=not cfg.progress)


def _train(args: argparse.Namespace) -> None:
    from .train import train

    cfg = train_config(args)
    result = train(cfg)
    if result.main_process:
        print(f"done: {result.steps} steps, checkpoint {result.path}")


def _load(args: argparse.Namespace) -> Any:
    from .arch import load_model
    from .checkpoint import read_trainer_state
    from .demo import demo_model_path, ensure_demo_model
    from .tokenizer import load_tokenizer
    from .train import check_backend, resolve_device

    device = resolve_device(args.device)
    check_backend(args.backend, device)
    if args.model is None:
        path = ensure_demo_model(rebuild=getattr(args, "rebuild_demo", False))
        state = read_trainer_state(path)
        steps = state["step"] if state else "?"
        print(f"[demo model] {path}: MiniLM fine-tuned for only {steps} steps on the built-in corpus (a CPU "
              "demo, expect rough text; pass --model for your own checkpoint)", file=sys.stderr)
    else:
        if getattr(args, "rebuild_demo", False):
            raise ValueError("--rebuild-demo rebuilds the demo model, which is used without --model: drop one of them")
        path = Path(args.model)
        if path == demo_model_path():
            ensure_demo_model()
    tokenizer = load_tokenizer(args.tokenizer) if getattr(args, "tokenizer", None) else None
    return load_model(path, device=device, tokenizer=tokenizer)  # any registered architecture


#: ``dbert generate``'s decoding flags that are keyword arguments of :func:`dbert_kernels.generate`.
_GENERATE_FLAGS = ("block_length", "cache", "refresh_every", "cfg_scale")


def _strategy_options(args: argparse.Namespace) -> dict[str, Any]:
    """The strategy options given on the command line (the others keep the strategy's defaults)."""
    from dbert_kernels import OPTIONS

    return {name: getattr(args, name) for name in OPTIONS if getattr(args, name, None) is not None}


def _show_step(tokenizer: Any, mask_id: int) -> Any:
    def show(step: int, ids: Any, revealed: Any) -> None:
        for row in range(ids.shape[0]):
            if not bool(revealed[row].any()):
                continue
            toks = tokenizer.convert_ids_to_tokens(ids[row].tolist())
            words = [f"*{w}*" if bool(r) else ("_" if i == mask_id else w)
                     for w, i, r in zip(toks, ids[row].tolist(), revealed[row].tolist(), strict=True)]
            print(f"step {step:3d} [{row}] +{int(revealed[row].sum()):<3d} {' '.join(words)}")

    return show


def _sample(loaded: Any, args: argparse.Namespace, n: int) -> tuple[Any, list[str], Any]:
    """Generated ids, their texts, and the sampler's statistics (None where the architecture's
    sampler has none, e.g. the GPT-2 baseline); a family ignores the decoding options it has no use for."""
    from dbert_kernels import Sampling

    from .arch import get_architecture
    from .generation import decode

    options = _strategy_options(args)
    options.update({name: getattr(args, name) for name in _GENERATE_FLAGS if getattr(args, name, None) is not None})
    if getattr(args, "show_steps", False):
        options["on_step"] = _show_step(loaded.tokenizer, loaded.settings.special_ids["mask"])
    sampling = Sampling(temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p, seed=args.seed,
                        backend=args.backend)
    ids, stats = get_architecture(loaded.arch).sample(
        loaded.model, loaded.settings, loaded.tokenizer, n=n, steps=args.steps, seq_len=getattr(args, "seq_len", None),
        strategy=args.strategy, sampling=sampling, token_counts=loaded.token_counts,
        sentence_level=getattr(args, "sentence_level", False), early_stop=getattr(args, "early_stop", False),
        progress=not args.no_progress, **options,
    )
    return ids, decode(loaded.tokenizer, ids, loaded.settings), stats


def _check_decoding(args: argparse.Namespace) -> None:
    """Refuse bad decoding flags before the model is loaded (the same checks as the sampler's)."""
    from dbert_kernels import OPTIONS, STRATEGIES, make_strategy

    options = _strategy_options(args)
    for name, value in options.items():
        choices = OPTIONS[name].choices
        if choices is not None and value not in choices:
            raise ValueError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, got {value!r}")
    reveal = options.pop("reveal", None)  # checked against the checkpoint's schedule when it is loaded
    if reveal is not None and "reveal" not in STRATEGIES[args.strategy].options:
        raise ValueError(f"--reveal applies to --strategy posterior, not {args.strategy}")
    make_strategy(args.strategy, **options)
    for flag in ("block_length", "refresh_every"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")


def _empty_reason(row: list[int], settings: Any) -> str:
    """Why a generated row decodes to no text (see :func:`dbert_model.generation.decode`)."""
    special = settings.special_ids
    body = row[1:] if row and row[0] == special["cls"] else row
    if not body:
        return "the row has no position after [CLS]"
    if body[0] == special["sep"]:
        return "the model ended the row with [SEP] at once"
    if body[0] == special["pad"]:
        return "the model put [PAD] right after [CLS]"
    return "the tokens before the row's [SEP] / [PAD] are all special tokens"


def _demo(args: argparse.Namespace) -> None:
    from .demo import ensure_demo_model

    path = ensure_demo_model(rebuild=args.rebuild)
    print(f"demo model: {path}")


def _generate(args: argparse.Namespace) -> None:
    _check_decoding(args)
    loaded = _load(args)
    start = time.perf_counter()
    ids, texts, stats = _sample(loaded, args, args.num)
    elapsed = time.perf_counter() - start
    for i, text in enumerate(texts):
        print(f"[{i}] {text}" if text else f"[{i}] (empty: {_empty_reason(ids[i].tolist(), loaded.settings)})")
        if args.show_ids:
            print(f"    ids: {ids[i].tolist()}")
    if stats is None:  # e.g. the GPT-2 baseline: one forward per token with its KV cache
        from .arch import get_architecture

        note = get_architecture(loaded.arch).sampling_note(args.steps)
        print(f"({args.num} x {ids.shape[1]} tokens, {loaded.arch}, {note}, {elapsed:.2f} s)", file=sys.stderr)
        return
    stopped = f", {stats.early_stopped_rows} rows stopped early" if stats.early_stopped_rows else ""
    print(f"({args.num} x {ids.shape[1]} tokens, {args.strategy}, {stats.calls} denoiser calls (at most {args.steps}), "
          f"{stats.calls_per_sequence(args.num):.1f} per sequence{stopped}, {elapsed:.2f} s)", file=sys.stderr)


def _eval(args: argparse.Namespace) -> None:
    from dbert_kernels import OPTIONS

    from .arch import get_architecture
    from .checkpoint import read_trainer_state
    from .data import encode, load_corpus
    from .evaluate import bleu4, normalise_references, self_bleu
    from .judge import Judge
    from .train import resolve_device

    _check_decoding(args)
    if args.samples == 1:
        raise ValueError("--samples must be 0 (skip BLEU) or >= 2 (Self-BLEU needs two samples)")
    if args.judge and not args.samples:
        raise ValueError("--judge scores generated samples: give --samples N (N >= 2), not 0")
    judge = Judge.load(args.judge, device=resolve_device(args.device)) if args.judge else None
    loaded = _load(args)
    arch = get_architecture(loaded.arch)
    if args.paper_metrics and not arch.paper_metrics:
        raise ValueError(f"--paper-metrics scores a DiffusionBERT checkpoint; --model is a {arch.name} checkpoint")
    data = args.data
    if data is None:
        state = read_trainer_state(loaded.path)
        data = state["config"].get("data", "builtin") if state else "builtin"
    corpus = load_corpus(data)
    sentences = getattr(corpus, args.split)
    if args.max_sentences:
        sentences = sentences[: args.max_sentences]
    split = encode(loaded.tokenizer, sentences, loaded.settings.max_len)
    results: dict[str, Any] = {"model": str(loaded.path), "arch": arch.name, "data": data,
                               "split": args.split}
    results.update(arch.perplexity(loaded, split, batch_size=args.batch_size, elbo_samples=args.elbo_samples,
                                   seed=args.seed, progress=not args.no_progress, backend=args.backend))
    if args.samples:
        _, texts, _ = _sample(loaded, args, args.samples)
        refs = normalise_references(loaded.tokenizer, sentences, loaded.settings.max_len)
        results.update({"samples": args.samples, "steps": args.steps, "strategy": args.strategy,
                        "reveal": args.reveal or OPTIONS["reveal"].default, "bleu4": bleu4(texts, refs),
                        "self_bleu4": self_bleu(texts), "empty_samples": sum(not t.strip() for t in texts),
                        "example": texts[:3]})
        if judge is not None:
            results["judged"] = judge.score(texts)
    if args.paper_metrics:
        from .evaluate import PAPER_STEPS, paper_metrics

        info = loaded.token_info().to(next(loaded.model.parameters()).device)
        texts = refs = None
        if args.samples:
            _, texts, _ = _sample(loaded, argparse.Namespace(**{**vars(args), "steps": PAPER_STEPS}), args.samples)
            refs = normalise_references(loaded.tokenizer, sentences, loaded.settings.max_len)
        results.update(paper_metrics(
            loaded.model, loaded.settings, info, split, texts, refs, elbo_samples=args.elbo_samples,
            batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress, backend=args.backend,
        ))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    skipped = int(results["skipped_truncated"])
    note = f"; {skipped} longer than max_len skipped" if skipped else ""
    r = results
    print(f"model {r['model']} on {data} ({args.split}, {int(r['sentences'])} whole sentences{note})")
    for line in arch.report(results, loaded, elbo_samples=args.elbo_samples):
        print(line)
    if args.samples:
        how = arch.sampling_note(args.steps)
        print(f"  BLEU-4       {results['bleu4']:.4f} ({args.samples} samples vs the {args.split} set, {how})")
        print(f"  Self-BLEU-4  {results['self_bleu4']:.4f}")
        if results["empty_samples"]:
            print(f"  ({results['empty_samples']} empty samples left out of BLEU / Self-BLEU)")
        if args.judge:
            j = results["judged"]
            print(f"  judge        generative PPL {j['gen_ppl']:.2f}, distinct-1/2/3 {j['distinct_1']:.3f} / "
                  f"{j['distinct_2']:.3f} / {j['distinct_3']:.3f}, repetition {j['repetition']:.3f} ({args.judge})")
        for text in results["example"]:
            print(f"  sample: {text}")
    if args.paper_metrics:
        print(f"  paper (Table 2): {r['paper_T']:g}-step bound, real tokens: {r['paper_nelbo_per_sentence']:.2f} "
              f"nats/sentence, perplexity per wordpiece <= {r['paper_ppl_per_wordpiece']:.2f}")
        if "paper_bleu4_mean" in r:
            print(f"    {args.samples} samples x 128 steps: BLEU-4 {r['paper_bleu4_mean']:.4f} (mean per sample; "
                  f"pooled {r['paper_bleu4_pooled']:.4f}), Self-BLEU-4 {r['paper_self_bleu4_mean']:.4f} "
                  f"(pooled {r['paper_self_bleu4_pooled']:.4f})")
            empty = int(r["paper_empty_samples"])
            if empty:
                print(f"    {empty} empty samples: 0 in the means (as the authors' code), left out of the pooled scores")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dbert`` console script; returns the exit status."""
    parser = build_parser()
    _config_file_defaults(parser, argv)
    args = parser.parse_args(argv)
    from dbert_kernels import use_default_threads

    use_default_threads(args.threads)
    try:
        {"train": _train, "generate": _generate, "demo": _demo, "eval": _eval}[args.command](args)
    except (OSError, ValueError, ImportError, FloatingPointError, TypeError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(f"dbert {args.command}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
