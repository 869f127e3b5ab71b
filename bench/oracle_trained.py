"""``python -m bench --only oracle-trained``: DiffusionBERT against GPT-2, both trained on a known language.

The oracle table (``bench/oracle.py``) measures the sampler alone on an exact denoiser. This bench
puts trained models in its place: a seeded Markov chain (:class:`dbert_kernels.markov.MarkovChain`)
writes a corpus (one sequence of ``L`` token words ``t0 .. t{V-1}`` per line, a WordPiece
``vocab.txt`` that maps each word to exactly one id), ``dbert train`` trains a DiffusionBERT and the
GPT-2 baseline of the same size on it side by side (two processes, one torch thread each, the same
``--minutes``), and then every number is measured against the chain's exact values:

* test NLL per chain token: GPT-2's exact next-token NLL of the ``L`` tokens after ``[CLS]``
  (``[SEP]`` not counted), DiffusionBERT's NELBO (an upper bound on its NLL, from
  :func:`dbert_model.evaluate.elbo_perplexity`: the full bound of a sentence, ``[SEP]`` included,
  divided by ``L``), both against the exact entropy rate ``H(X_1..X_L) / L``;
* one interleaved timing run: tokens/s at batch 1 and 8 of GPT-2 (KV cache) and of DiffusionBERT
  under several decoding settings, with the exact-judge metrics of each one's samples
  (:func:`dbert_kernels.markov.sampler_metrics`: NLL gap to the entropy rate, impossible
  transitions, bigram TV, distinct-n). Only token words are sampled at the ``L`` free positions
  (``[CLS]`` first and ``[SEP]`` last are fixed; ``[PAD]``, ``[UNK]``, ``[SEP]``, ``[CLS]``,
  ``[MASK]`` banned) for both models; a sample holding anything else counts as not parsed.

Writes ``oracle_trained_<device>.{json,md}`` (+ ``.png`` where matplotlib imports) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from dbert_kernels.markov import MarkovChain, sampler_metrics

from . import report
from .oracle import strategy_grid

__all__ = ["TrainedConfig", "FULL", "QUICK", "write_corpus", "check_tokenizer", "train_both", "model_nll",
           "run_bench", "markdown", "main"]

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@dataclass(frozen=True)
class TrainedConfig:
    """The language, the training and the decoding grid of one run."""

    vocab: int = 64
    zipf: float = 1.0
    sparsity: float = 0.5
    chain_seed: int = 0
    length: int = 32
    n_train: int = 40000
    n_valid: int = 256
    n_test: int = 512
    # model: a BERT of this size (GPT-2 copies it); the same for both
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    minutes: float = 12.0
    train_steps: int = 12000  # the learning-rate schedule's length (~20 steps/s on one CPU thread; --minutes caps it)
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 50
    schedule: str = "d3pm"
    loss: str = "mdlm"
    T: float = 1000.0
    eval_every: int = 2000
    # bench
    batches: tuple[int, ...] = (1, 8)
    samples: int = 128  # sequences per setting at batch 1 (2x that above), timed in batches of that size
    steps: tuple[int, ...] = (8, 16, 32, 64)
    thresholds: tuple[float, ...] = (0.5, 0.9)
    gammas: tuple[float, ...] = (1.0, 3.0, 10.0)
    block_length: int = 16
    caches: tuple[str, ...] = ("prefix", "dual")
    elbo_samples: int = 4
    seed: int = 1
    extra_train_flags: tuple[str, ...] = field(default_factory=tuple)


FULL = TrainedConfig()
QUICK = TrainedConfig(vocab=16, length=16, n_train=256, n_valid=32, n_test=32, hidden=32, layers=1, heads=2,
                      minutes=0.3, train_steps=6, batch_size=8, warmup=1, eval_every=3, samples=2, steps=(4, 16),
                      thresholds=(0.9,), gammas=(1.0,), block_length=8, elbo_samples=1, batches=(1, 2))


def word(i: int) -> str:
    return f"t{i}"


def chain_of(cfg: TrainedConfig) -> MarkovChain:
    return MarkovChain.random(cfg.vocab, seed=cfg.chain_seed, zipf=cfg.zipf, sparsity=cfg.sparsity)


def write_corpus(cfg: TrainedConfig, root: Path) -> dict[str, Any]:
    """``root/{train,valid,test}.txt`` (seeded chain samples, one per line) and ``root/vocab.txt``."""
    chain = chain_of(cfg)
    root.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {}
    for k, (name, n) in enumerate((("train", cfg.n_train), ("valid", cfg.n_valid), ("test", cfg.n_test))):
        seqs = chain.sample(n, cfg.length, seed=cfg.seed * 1000 + k)
        (root / f"{name}.txt").write_text("\n".join(" ".join(word(t) for t in row) for row in seqs.tolist()) + "\n",
                                          encoding="utf-8")
        info[name] = n
    (root / "vocab.txt").write_text("\n".join([*SPECIALS, *(word(i) for i in range(cfg.vocab))]) + "\n",
                                    encoding="utf-8")
    return info


def check_tokenizer(cfg: TrainedConfig, root: Path) -> Any:
    """Load ``root/vocab.txt`` and check that token word ``t{i}`` is exactly one id (``5 + i``)
    and that a test line encodes to ``[CLS] + L + [SEP]``; returns the tokenizer."""
    from dbert_model.tokenizer import load_tokenizer

    tok = load_tokenizer(root / "vocab.txt")
    words = [word(i) for i in range(cfg.vocab)]
    ids = tok(" ".join(words), add_special_tokens=False)["input_ids"]
    if ids != [len(SPECIALS) + i for i in range(cfg.vocab)]:
        raise ValueError("the token words do not map 1:1 onto WordPiece ids")
    line = (root / "test.txt").read_text(encoding="utf-8").splitlines()[0]
    enc = tok(line)["input_ids"]
    if len(enc) != cfg.length + 2 or enc[0] != tok.cls_token_id or enc[-1] != tok.sep_token_id:
        raise ValueError(f"a test line encodes to {len(enc)} ids, not [CLS] + {cfg.length} + [SEP]")
    return tok


def to_chain_ids(ids: torch.Tensor, length: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chain ids of generated rows ``[CLS] w_1 .. w_L ...`` (token ids ``5 + i``) and ``[N]`` bool:
    the rows whose ``L`` free positions all hold token words (the others do not parse)."""
    body = ids[:, 1 : length + 1].cpu() - len(SPECIALS)
    ok = ((body >= 0) & (body < vocab)).all(dim=1) & (body.shape[1] == length)
    return body.clamp(0, vocab - 1), ok


def train_command(cfg: TrainedConfig, data: Path, init: Path | str, out: Path, arch: str) -> list[str]:
    return [sys.executable, "-m", "dbert_model.cli", "train", "--out", str(out), "--arch", arch, "--data", str(data),
            "--tokenizer", str(data / "vocab.txt"), "--init", str(init), "--max-len", str(cfg.length + 2),
            "--schedule", cfg.schedule, "--loss", cfg.loss, "--T", str(cfg.T), "--batch-size", str(cfg.batch_size),
            "--lr", str(cfg.lr), "--warmup", str(cfg.warmup), "--steps", str(cfg.train_steps),
            "--minutes", str(cfg.minutes), "--eval-every", str(cfg.eval_every), "--eval-sentences", str(cfg.n_valid),
            "--save-every", str(10**6), "--log-every", "50", "--device", "cpu", "--no-progress", "--seed", "0",
            *cfg.extra_train_flags]


def write_init(cfg: TrainedConfig, root: Path) -> Path:
    """A randomly initialised BERT of the configured size saved as a local model directory (``--init``)."""
    from transformers import AutoModelForMaskedLM

    from dbert_model.build import tiny_config

    conf = tiny_config(cfg.vocab + len(SPECIALS), hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads,
                       max_len=cfg.length + 2)
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(conf).save_pretrained(str(root))
    return root


def train_both(cfg: TrainedConfig, data: Path, runs: Path, *, parallel: bool = True) -> dict[str, Any]:
    """Train DiffusionBERT and GPT-2 side by side (two ``dbert train`` processes, OMP_NUM_THREADS=1
    each; ``parallel=False``: one after the other in this process, for the quick test); returns the
    commands, exit codes, wall times and the logs' key lines."""
    init = write_init(cfg, runs / "init")
    out: dict[str, Any] = {}
    cmds = {name: train_command(cfg, data, init, runs / name, name) for name in ("diffusion", "gpt2")}
    if parallel:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        procs = {}
        t0 = time.perf_counter()
        for name, cmd in cmds.items():
            log = open(runs / f"{name}.log", "w", encoding="utf-8")  # noqa: SIM115 - closed below
            procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
        for name, (p, log) in procs.items():
            rc = p.wait()
            log.close()
            out[name] = {"exit": rc, "wall_s": round(time.perf_counter() - t0, 1)}
    else:
        import contextlib

        from dbert_model.cli import main as dbert_main

        for name, cmd in cmds.items():
            t0 = time.perf_counter()
            with open(runs / f"{name}.log", "w", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
                    contextlib.redirect_stderr(log):
                rc = dbert_main(cmd[3:])
            out[name] = {"exit": rc, "wall_s": round(time.perf_counter() - t0, 1)}
    for name, cmd in cmds.items():
        text = (runs / f"{name}.log").read_text(encoding="utf-8")
        if out[name]["exit"] != 0:
            raise RuntimeError(f"dbert train ({name}) failed with exit status {out[name]['exit']}:\n{text[-2000:]}")
        out[name].update(command=shlex.join(["OMP_NUM_THREADS=1", "dbert", *cmd[3:]]) if parallel
                         else shlex.join(["dbert", *cmd[3:]]), log=key_lines(text))
    return out


def key_lines(text: str, keep: int = 12) -> list[str]:
    """The lines of a training log worth quoting: validation results, the stop and the last step logs."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    keys = [ln for ln in lines if any(k in ln.lower() for k in ("valid", "nelbo", "nll", "done", "stop", "minutes",
                                                                   "parameters", "params"))]
    steps = [ln for ln in lines if ln not in keys and "step" in ln.lower()]
    return keys[-keep:] + steps[-2:]


# ---------------------------------------------------------------------------------------------- NLL
@torch.no_grad()
def gpt2_chain_nll(model: Any, split: Any, pad_id: int, length: int, batch_size: int = 64) -> dict[str, float]:
    """GPT-2's exact NLL of the ``length`` chain tokens after ``[CLS]`` (``[SEP]`` left out), per
    token, with its standard error over sequences; and the NLL of ``[SEP]`` per sequence."""
    from dbert_model.ar import ar_loss  # noqa: F401 - the package's AR loss is the reference for this

    per_seq, sep = [], []
    model.eval()
    for start in range(0, len(split), batch_size):
        ids = split.ids[start : start + batch_size]
        logits = model(input_ids=ids[:, :-1], attention_mask=(ids[:, :-1] != pad_id).long()).logits.double()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        per_seq.append(-logp[:, :length].sum(1) / length)
        sep.append(-logp[:, length])
    x = torch.cat(per_seq)
    return {"sequences": x.numel(), "nll_per_token": float(x.mean()), "nll_se": float(x.std()) / math.sqrt(x.numel()),
            "sep_nll_per_sequence": float(torch.cat(sep).mean())}


def model_nll(loaded_dbert: Any, loaded_gpt2: Any, test_lines: list[str], cfg: TrainedConfig,
              chain: MarkovChain) -> dict[str, Any]:
    """Both models' test NLL per chain token against the exact entropy rate (and the chain's own
    NLL of the same test sequences: the floor that the finite test set gives)."""
    from dbert_model.data import encode
    from dbert_model.evaluate import elbo_perplexity

    h = chain.entropy_rate(cfg.length)
    seqs = torch.tensor([[int(w[1:]) for w in ln.split()] for ln in test_lines])
    truth = -chain.log_likelihood(seqs) / cfg.length
    split = encode(loaded_gpt2.tokenizer, test_lines, cfg.length + 2)
    g = gpt2_chain_nll(loaded_gpt2.model, split, loaded_gpt2.settings.special_ids["pad"], cfg.length)
    s = loaded_dbert.settings
    info = loaded_dbert.token_info()
    e = elbo_perplexity(loaded_dbert.model, s, info, encode(loaded_dbert.tokenizer, test_lines, s.max_len),
                        samples=cfg.elbo_samples, batch_size=64, seed=cfg.seed)
    d_bound = e["nelbo_per_sentence"] / cfg.length
    return {
        "entropy_rate": h, "test_sequences": len(test_lines),
        "chain_nll_of_test": float(truth.mean()), "chain_nll_se": float(truth.std()) / math.sqrt(truth.numel()),
        "gpt2": {**g, "gap": g["nll_per_token"] - h},
        "diffusion": {"nelbo_per_token_bound": d_bound, "gap_bound": d_bound - h, "elbo_samples": cfg.elbo_samples,
                      "nelbo_real_per_token": e["nelbo_real_per_sentence"] / cfg.length, "T": e["T"]},
    }


# -------------------------------------------------------------------------------------------- bench
def settings(cfg: TrainedConfig) -> list[dict[str, Any]]:
    """The DiffusionBERT decoding settings (``strategy`` / ``setting`` / ``block`` label each)."""
    free = cfg.length
    # one token per step in an order that does not depend on the draw: the sampler adds no error,
    # so this row measures the model alone
    out: list[dict[str, Any]] = [dict(strategy="topk, margin order", setting=f"steps={free} (model error only)",
                                      block=None, gen=dict(strategy="topk", steps=free, confidence="margin"))]
    blocks = math.ceil((cfg.length + 2) / cfg.block_length)
    out += [s for s in strategy_grid(cfg.steps, cfg.thresholds, cfg.gammas, free, cfg.block_length)
            if s["block"] is None or s["strategy"] not in ("posterior", "topk") or s["gen"]["steps"] >= blocks]
    # the block caches (an approximation of the bidirectional encoder), with blocks
    for mode in cfg.caches:
        for s in sorted(s for s in cfg.steps if s >= blocks)[:2]:
            out.append(dict(strategy="topk", setting=f"steps={s}, cache={mode}", block=cfg.block_length,
                            gen=dict(strategy="topk", steps=s, cache=mode)))
        out.append(dict(strategy="threshold", setting=f"threshold={max(cfg.thresholds)}, cache={mode}",
                        block=cfg.block_length,
                        gen=dict(strategy="threshold", threshold=max(cfg.thresholds), steps=free, cache=mode)))
        out.append(dict(strategy="entropy_bound", setting=f"gamma={cfg.gammas[len(cfg.gammas) // 2]}, cache={mode}",
                        block=cfg.block_length, gen=dict(strategy="entropy_bound", gamma=cfg.gammas[len(cfg.gammas) // 2],
                                                         steps=free, cache=mode)))
    return out


def _samples_per_batch(cfg: TrainedConfig, batch: int) -> int:
    """Sequences per setting at ``batch``: ``cfg.samples`` at batch 1, twice that (at least) above."""
    return cfg.samples if batch == 1 else max(2 * cfg.samples, batch)


class _Gpt2Sampler:
    """GPT-2 with its KV cache: ``[CLS]`` then exactly ``L`` tokens, only token words allowed."""

    def __init__(self, loaded: Any, length: int, special: list[int]) -> None:
        from transformers import GenerationConfig

        self.loaded = loaded
        sp = loaded.settings.special_ids
        self.cls = sp["cls"]
        self.gen = GenerationConfig(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=length,
                                    min_new_tokens=length, eos_token_id=sp["mask"], pad_token_id=sp["pad"],
                                    bos_token_id=sp["cls"], suppress_tokens=special, disable_compile=True)

    @torch.no_grad()
    def __call__(self, batch: int, seed: int) -> tuple[torch.Tensor, int]:
        from dbert_model.build import _quiet_transformers

        torch.manual_seed(seed)
        prompt = torch.full((batch, 1), self.cls, dtype=torch.int64)
        with _quiet_transformers():
            out = self.loaded.model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=self.gen)
        return out, out.shape[1] - 1


class _DbertSampler:
    """DiffusionBERT through :func:`dbert_kernels.generate`: ``[CLS]`` and ``[SEP]`` fixed, only
    token words allowed at the ``L`` free positions, no top-k (the exact judge compares with the
    full distribution)."""

    def __init__(self, loaded: Any, length: int, special: list[int], gen: dict[str, Any], block: int | None) -> None:
        from dbert_model.build import DiffusionBertDenoiser

        sp = loaded.settings.special_ids
        self.denoiser = DiffusionBertDenoiser(loaded.model)
        self.mask_id = sp["mask"]
        self.seq_len = length + 2
        fixed = torch.full((self.seq_len,), -1, dtype=torch.int64)
        fixed[0], fixed[-1] = sp["cls"], sp["sep"]
        self.kw = dict(schedule=loaded.settings.build_schedule(), top_k=None, banned_ids=special, fixed=fixed,
                       block_length=block, **gen)

    @torch.no_grad()
    def __call__(self, batch: int, seed: int) -> tuple[torch.Tensor, int]:
        import dbert_kernels as dk

        ids, stats = dk.generate(self.denoiser, mask_id=self.mask_id, batch_size=batch, seq_len=self.seq_len, seed=seed,
                                 progress=False, return_stats=True, **self.kw)
        return ids, stats.calls



def run_bench(cfg: TrainedConfig, loaded_dbert: Any, loaded_gpt2: Any, chain: MarkovChain,
              progress: Any = None) -> dict[str, Any]:
    """One interleaved run: every setting generates its batches in turn (round-robin over the
    settings and batch sizes, so that a drift of the machine spreads over all of them); returns
    the rows with tokens/s per batch size and the exact-judge metrics of the pooled samples."""
    special = sorted(set(loaded_dbert.settings.special_ids.values()))
    rows: list[dict[str, Any]] = [dict(strategy="GPT-2", setting="KV cache, ancestral", block=None, gen=None,
                                       sampler=_Gpt2Sampler(loaded_gpt2, cfg.length, special))]
    for s in settings(cfg):
        rows.append({**s, "sampler": _DbertSampler(loaded_dbert, cfg.length, special, s["gen"], s["block"])})
    jobs = []  # (row, batch, chunk)
    for b in cfg.batches:
        for c in range(math.ceil(_samples_per_batch(cfg, b) / b)):
            jobs.append((b, c))
    for r in rows:  # warm-up, untimed
        r["sampler"](max(cfg.batches), seed=10**6)
        r.update(seconds={b: 0.0 for b in cfg.batches}, tokens={b: 0 for b in cfg.batches},
                 calls={b: 0 for b in cfg.batches}, ids=[])
    for b, c in jobs:
        for k, r in enumerate(rows):
            seed = cfg.seed + 7919 * k + 104729 * c + b
            t0 = time.perf_counter()
            ids, calls = r["sampler"](b, seed)
            r["seconds"][b] += time.perf_counter() - t0
            r["tokens"][b] += b * cfg.length
            r["calls"][b] += calls
            r["ids"].append(ids.cpu())
        if progress is not None:
            progress(f"batch {b} chunk {c}")
    out_rows = []
    truth = sampler_metrics(chain, chain.sample(sum(_samples_per_batch(cfg, b) for b in cfg.batches), cfg.length,
                                                seed=cfg.seed + 5000))
    out_rows.append({"model": "chain", "strategy": "chain samples", "setting": "drawn from the chain", "block_length": None,
                     "unparsed": 0, **report.json_floats(truth)})
    for r in rows:
        ids = torch.cat([x[:, : cfg.length + 1] for x in r["ids"]])
        chain_ids, ok = to_chain_ids(ids, cfg.length, cfg.vocab)
        m = sampler_metrics(chain, chain_ids[ok]) if bool(ok.any()) else {}
        row = {"model": "gpt2" if r["gen"] is None else "diffusion", "strategy": r["strategy"], "setting": r["setting"],
               "block_length": r["block"], "unparsed": int((~ok).sum()), **report.json_floats(m)}
        for b in cfg.batches:
            n_seq = r["tokens"][b] // cfg.length
            row[f"tokens_per_s_b{b}"] = round(r["tokens"][b] / r["seconds"][b], 2)
            row[f"seconds_b{b}"] = round(r["seconds"][b], 3)
            row[f"sequences_b{b}"] = n_seq
            row[f"forwards_per_batch_b{b}"] = round(r["calls"][b] * b / n_seq, 2) if n_seq else None
        out_rows.append(row)
    return {"rows": out_rows, "verdict": verdict(out_rows, cfg)}


def _quality_ok(r: dict[str, Any], g: dict[str, Any], length: int) -> tuple[bool, bool, bool]:
    """(NLL ok, impossible ok, strictly no worse): ``|NLL gap| <= |GPT-2's| + 2 SE`` (both
    samples' SE combined), impossible-transition rate <= GPT-2's + 2 SE (two-proportion), no
    unparsed sample; the third is the same on the point estimates alone."""
    if r.get("nll_gap") is None or r["unparsed"]:
        return False, False, False
    se = math.sqrt((r["nll_se"] or 0) ** 2 + (g["nll_se"] or 0) ** 2)
    nll_ok = abs(r["nll_gap"]) <= abs(g["nll_gap"]) + 2 * se
    n1, n2 = r["samples"] * (length - 1), g["samples"] * (length - 1)
    p = (r["impossible_transition_rate"] * n1 + g["impossible_transition_rate"] * n2) / (n1 + n2)
    imp_ok = r["impossible_transition_rate"] <= g["impossible_transition_rate"] + 2 * math.sqrt(
        max(p * (1 - p), 0.0) * (1 / n1 + 1 / n2))
    strict = abs(r["nll_gap"]) <= abs(g["nll_gap"]) and r["impossible_transition_rate"] <= g["impossible_transition_rate"]
    return nll_ok, imp_ok, strict


def verdict(rows: list[dict[str, Any]], cfg: TrainedConfig) -> dict[str, Any]:
    """Which DiffusionBERT settings reach >= 2x GPT-2's tokens/s at the largest batch with a
    quality no worse than GPT-2's samples, and where each family of settings breaks down."""
    b = max(cfg.batches)
    g = next(r for r in rows if r["model"] == "gpt2")
    key = f"tokens_per_s_b{b}"
    for r in rows:
        if r["model"] != "diffusion":
            continue
        nll_ok, imp_ok, strict = _quality_ok(r, g, cfg.length)
        r["speedup_vs_gpt2"] = {bb: round(r[f"tokens_per_s_b{bb}"] / g[f"tokens_per_s_b{bb}"], 3) for bb in cfg.batches}
        r["quality_ok"] = nll_ok and imp_ok
        r["quality_strict"] = strict
        r["passes"] = r["quality_ok"] and r["speedup_vs_gpt2"][b] >= 2
    diff = [r for r in rows if r["model"] == "diffusion"]
    families: dict[str, list[dict[str, Any]]] = {}
    for r in diff:
        families.setdefault(r["strategy"] + (f", block {r['block_length']}" if r["block_length"] else ""), []).append(r)
    notes = []

    def why(r: dict[str, Any]) -> str:
        parts = [f"{r['setting']} ({r['speedup_vs_gpt2'][b]:.2f}x)"]
        if r["unparsed"]:
            parts.append(f"{r['unparsed']} unparsed samples")
        if r.get("nll_gap") is not None:
            parts.append(f"NLL gap {r['nll_gap']:+.3f}, impossible transitions {100 * r['impossible_transition_rate']:.2f}%")
        return parts[0] + (": " + ", ".join(parts[1:]) if parts[1:] else "")

    for fam, rs in families.items():
        rs = sorted(rs, key=lambda r: r[key])  # slowest first
        good = [r for r in rs if r["quality_ok"]]
        if not good:
            text = f"{fam}: not ok at any setting; slowest " + why(rs[0])
            if len(rs) > 1:
                text += "; fastest " + why(rs[-1])
        else:
            top = good[-1]
            text = f"{fam}: ok up to {top['setting']} ({top['speedup_vs_gpt2'][b]:.2f}x GPT-2's tokens/s at batch {b})"
            faster_bad = [r for r in rs if r[key] > top[key] and not r["quality_ok"]]
            text += ("; breaks down at " + why(faster_bad[0])) if faster_bad else "; no breakdown within this grid"
        notes.append(text)
    return {"batch": b, "passing": [f"{r['strategy']} {r['setting']}" + (f" block={r['block_length']}" if r["block_length"]
                                                                          else "") for r in diff if r["passes"]],
            "families": notes}


# ------------------------------------------------------------------------------------------- report

def markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    nll = res["nll"]
    tr = res.get("training", {})
    bs = cfg["batches"]
    big = max(bs)
    lines = [
        "# DiffusionBERT against GPT-2, both trained on a known Markov language (exact judge)", "",
        f"`{res['command']}` — {res['started']}, {res['environment']['device_name']}, torch threads {res['threads']}, "
        f"bench {res['bench_s']:.0f} s, load average before {res['loadavg_before']} / after {res['loadavg_after']}.", "",
        f"Language: Markov chain V = {cfg['vocab']}, Zipf {cfg['zipf']}, sparsity {cfg['sparsity']} "
        f"({100 * res['chain']['zero_transitions']:.1f}% of transitions impossible), seed {cfg['chain_seed']}, "
        f"L = {cfg['length']} tokens per sequence; corpus {cfg['n_train']} train / {cfg['n_valid']} valid / "
        f"{cfg['n_test']} test sequences (one line of token words each). Both models: a {cfg['layers']} x "
        f"{cfg['hidden']} ({cfg['heads']} heads) transformer from random weights, trained side by side with one torch "
        f"thread each for at most {cfg['minutes']:g} minutes (batch {cfg['batch_size']}, lr {cfg['lr']:g}, "
        f"{cfg['train_steps']}-step schedule); DiffusionBERT: {cfg['schedule']} schedule, {cfg['loss']} loss, TAD.", "",
        "## Test NLL per token against the exact entropy rate", "",
        f"Entropy rate H(X_1..X_L)/L = **{nll['entropy_rate']:.4f}** nats/token (the chain's own NLL of the "
        f"{nll['test_sequences']} test sequences: {nll['chain_nll_of_test']:.4f} ± {nll['chain_nll_se']:.4f}).", "",
        "| model | test NLL / token | margin over the entropy rate | note |", "|---|---|---|---|",
        f"| GPT-2 | {nll['gpt2']['nll_per_token']:.4f} ± {nll['gpt2']['nll_se']:.4f} | {nll['gpt2']['gap']:+.4f} | exact "
        f"next-token NLL of the L tokens after [CLS] ([SEP] not counted; its NLL: "
        f"{nll['gpt2']['sep_nll_per_sequence']:.4f} nats/sequence) |",
        f"| DiffusionBERT | <= {nll['diffusion']['nelbo_per_token_bound']:.4f} | <= {nll['diffusion']['gap_bound']:+.4f} "
        f"| NELBO (upper bound), T = {nll['diffusion']['T']:g}, {nll['diffusion']['elbo_samples']} Monte Carlo draws per "
        "sequence, whole-sentence bound ([SEP] included) / L |", "",
    ]
    for name, t in tr.items():
        lines += [f"Training, {name}: `{t['command']}` (exit {t['exit']}, {t['wall_s']:.0f} s wall). Key log lines:", "",
                  "```", *t["log"], "```", ""]
    v = res["bench"]["verdict"]
    g = next(r for r in res["bench"]["rows"] if r["model"] == "gpt2")
    g_gap, g_imp = f"{g['nll_gap']:+.3f} ± {g['nll_se']:.3f}", f"{100 * g['impossible_transition_rate']:.2f}%"
    lines += [
        "## Speed and sample quality (one interleaved run)", "",
        f"Samples per setting: {', '.join(f'{n} at batch {b}' for b, n in res['samples_per_batch'].items())}, pooled "
        "for the quality columns; no top-k, temperature 1 for both models; [CLS] first and [SEP] last fixed, only "
        "token words allowed at the L free positions. tokens/s = free tokens generated per second of wall clock "
        "(batch b: b sequences per generate call). Columns: fwd/batch = model forwards per generate call at batch "
        f"{big}; NLL gap = NLL per token of the samples under the chain minus the entropy rate (± SE); impossible "
        "= zero-probability transitions per transition; TV = bigram total variation to the exact bigram marginals "
        "(compare with the chain's own samples); unparsed = samples with a non-token word at a free position; "
        f"ok = |NLL gap| <= |GPT-2's| + 2 SE and impossible rate <= GPT-2's + 2 SE (two-proportion) and none unparsed "
        "(strict: on the point estimates alone).", "",
        "| model | sampler | setting | block | " + " | ".join(f"tok/s b{b}" for b in bs) + f" | x GPT-2 b{big} "
        f"| fwd/batch b{big} | NLL gap ± SE | impossible trans % | impossible seq % | bigram TV | d-1 | d-2 | d-3 "
        "| unparsed | ok (strict) |",
        "|" + "---|" * (14 + len(bs)),
    ]
    for r in res["bench"]["rows"]:
        if r["model"] == "chain":
            speed = " | ".join("-" for _ in bs) + " | - | -"
        else:
            speed = " | ".join(report.fmt(r[f"tokens_per_s_b{b}"], ".1f") for b in bs)
            speed += f" | {report.fmt(r.get('speedup_vs_gpt2', {}).get(big, 1.0), '.2f')}"
            speed += f" | {report.fmt(r.get(f'forwards_per_batch_b{big}'), '.1f')}"
        ok = "-" if r["model"] != "diffusion" else (("yes" if r["quality_ok"] else "no")
                                                     + (" (yes)" if r["quality_strict"] else " (no)"))
        lines.append(
            f"| {r['model']} | {r['strategy']} | {r['setting']} | {r['block_length'] or '-'} | {speed} "
            f"| {report.fmt(r.get('nll_gap'), '+.3f')} ± {report.fmt(r.get('nll_se'), '.3f')} "
            f"| {report.fmt(100 * r['impossible_transition_rate'] if r.get('impossible_transition_rate') is not None else None, '.2f')} "
            f"| {report.fmt(100 * r['impossible_seq_rate'] if r.get('impossible_seq_rate') is not None else None, '.1f')} "
            f"| {report.fmt(r.get('bigram_tv'))} | {report.fmt(r.get('distinct_1'))} | {report.fmt(r.get('distinct_2'))} "
            f"| {report.fmt(r.get('distinct_3'))} | {r['unparsed']} | {ok} |")
    lines += ["", f"**>= 2x GPT-2's tokens/s at batch {v['batch']} with quality no worse than GPT-2's samples:** "
              + (", ".join(v["passing"]) if v["passing"] else "none") + ".", "",
              f"Where each family breaks down (GPT-2's samples: NLL gap {g_gap}, impossible transitions {g_imp}; "
              f"speed as a multiple of GPT-2's tokens/s at batch {v['batch']}):", ""]
    lines += [f"* {t}" for t in v["families"]]
    lines.append("")
    for n in res.get("notes", []):
        lines.append(f"Note: {n}")
    return "\n".join(lines) + "\n"


def plot(res: dict[str, Any], path: Path) -> bool:
    plt = report.import_pyplot("the oracle-trained plot")
    if plt is None:
        return False
    big = max(res["config"]["batches"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[str, list[tuple[float, float]]] = {}
    for r in res["bench"]["rows"]:
        if r["model"] == "chain" or r.get("nll_gap") is None:
            continue
        k = r["strategy"] + (f" block {r['block_length']}" if r["block_length"] else "")
        groups.setdefault(k, []).append((r[f"tokens_per_s_b{big}"], r["nll_gap"]))
    for k, pts in groups.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="*" if k == "GPT-2" else "o", ms=12 if k == "GPT-2" else 5,
                label=k, ls="none" if k == "GPT-2" else "-")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"tokens/s at batch {big}")
    ax.set_ylabel("sample NLL per token - entropy rate (nats)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------- main

def _check_chain(cfg: TrainedConfig, data: Path) -> None:
    meta = json.loads((data / "chain.json").read_text(encoding="utf-8"))
    want = {k: getattr(cfg, k) for k in ("vocab", "zipf", "sparsity", "chain_seed", "length")}
    if {k: meta.get(k) for k in want} != want:
        raise SystemExit(f"{data} was written for a different chain ({meta}); this run expects {want}")


def main(argv: list[str], out_dir: Path, quick: bool, *, checkpoint: str | None = None, baseline: str | None = None,
         work: Path | None = None, notes: list[str] | None = None, progress: bool = True,
         cfg: TrainedConfig | None = None) -> dict[str, Any]:
    """Prepare the corpus, train both models (unless ``checkpoint`` and ``baseline`` are given:
    then their training corpus is used), measure the NLLs, run the bench, write
    ``oracle_trained_cpu.{json,md}`` (+ png) into ``out_dir``."""
    from dbert_model.ar import load_ar
    from dbert_model.checkpoint import load_checkpoint, read_trainer_state
    from dbert_model.data import cache_dir

    cfg = cfg or (QUICK if quick else FULL)
    work = Path(work) if work is not None else cache_dir() / "oracle-trained" / ("quick" if quick else "full")
    res: dict[str, Any] = {"schema": 1, "mode": "quick" if quick else "full", "command": "python -m bench " + shlex.join(argv),
                           "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "environment": report.environment(torch.device("cpu")), "config": asdict(cfg),
                           "threads": torch.get_num_threads(), "notes": list(notes or [])}
    if (checkpoint is None) != (baseline is None):
        raise SystemExit("--only oracle-trained: give both --checkpoint (DiffusionBERT) and --baseline (GPT-2), or neither "
                         "(then both are trained here)")
    if checkpoint is None:
        data = work / "data"
        write_corpus(cfg, data)
        (data / "chain.json").write_text(json.dumps({k: getattr(cfg, k) for k in ("vocab", "zipf", "sparsity",
                                                                                  "chain_seed", "length")}))
        check_tokenizer(cfg, data)
        runs = work / "runs"
        for name in ("diffusion", "gpt2"):
            if (runs / name).exists():
                import shutil

                shutil.rmtree(runs / name)
        runs.mkdir(parents=True, exist_ok=True)
        res["training"] = train_both(cfg, data, runs, parallel=not quick)
        checkpoint, baseline = str(runs / "diffusion"), str(runs / "gpt2")
    else:
        state = read_trainer_state(checkpoint) or {}
        data = Path(state.get("config", {}).get("data", ""))
        _check_chain(cfg, data)
        check_tokenizer(cfg, data)
        for name, path in (("diffusion", Path(checkpoint)), ("gpt2", Path(baseline))):
            log = path.parent / f"{name}.log"
            if log.is_file():
                res.setdefault("training", {})[name] = {"command": f"(see {log})", "exit": 0, "wall_s": float("nan"),
                                                        "log": key_lines(log.read_text(encoding="utf-8"))}
        tj = Path(checkpoint).parent / "train.json"
        if tj.is_file():
            res["training"] = json.loads(tj.read_text(encoding="utf-8"))
    res["checkpoints"] = {"diffusion": checkpoint, "gpt2": baseline, "data": str(data)}
    chain = chain_of(cfg)
    res["chain"] = {"zero_transitions": float((chain.trans == 0).double().mean()),
                    "entropy_rate": chain.entropy_rate(cfg.length)}
    ld = load_checkpoint(checkpoint, device="cpu")
    lg = load_ar(baseline, device="cpu")
    test_lines = (data / "test.txt").read_text(encoding="utf-8").splitlines()
    res["nll"] = nll = model_nll(ld, lg, test_lines, cfg, chain)
    print(f"entropy rate {nll['entropy_rate']:.4f}; GPT-2 test NLL {nll['gpt2']['nll_per_token']:.4f} "
          f"({nll['gpt2']['gap']:+.4f}); DiffusionBERT NELBO <= {nll['diffusion']['nelbo_per_token_bound']:.4f} "
          f"({nll['diffusion']['gap_bound']:+.4f})", file=sys.stderr, flush=True)
    res["samples_per_batch"] = {b: _samples_per_batch(cfg, b) for b in cfg.batches}
    tick = None
    if progress:
        def tick(label: str) -> None:
            print(f"  oracle-trained bench: {label}", file=sys.stderr, flush=True)
    res["loadavg_before"] = report.load_average()
    t0 = time.perf_counter()
    res["bench"] = run_bench(cfg, ld, lg, chain, tick)
    res["bench_s"] = time.perf_counter() - t0
    res["loadavg_after"] = report.load_average()
    res["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "oracle_trained_cpu"
    report.write_atomic(out_dir / f"{tag}.json", json.dumps(res, indent=1, default=str) + "\n")
    md = markdown(res)
    if plot(res, out_dir / f"{tag}.png"):
        md += f"\n![sample NLL gap against tokens/s]({tag}.png)\n"
    report.write_atomic(out_dir / f"{tag}.md", md)
    report.write_index(out_dir)
    print(md)
    return res


def rerender(path: Path) -> None:
    """Recompute the verdict of a results JSON from its rows and rewrite its markdown (no measurement)."""
    res = json.loads(path.read_text(encoding="utf-8"))
    res["config"]["batches"] = tuple(res["config"]["batches"])
    cfg = TrainedConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in res["config"].items()})
    for r in res["bench"]["rows"]:
        if "speedup_vs_gpt2" in r:
            r["speedup_vs_gpt2"] = {int(k): v for k, v in r["speedup_vs_gpt2"].items()}
    res["bench"]["verdict"] = verdict(res["bench"]["rows"], cfg)
    report.write_atomic(path, json.dumps(res, indent=1, default=str) + "\n")
    md = markdown(res)
    png = path.with_suffix(".png")
    if png.is_file():
        md += f"\n![sample NLL gap against tokens/s]({png.name})\n"
    report.write_atomic(path.with_suffix(".md"), md)


def _cli(argv: list[str]) -> None:  # pragma: no cover - python -m bench.oracle_trained
    p = argparse.ArgumentParser(prog="python -m bench.oracle_trained", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--baseline", default=None)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--note", action="append", default=[])
    p.add_argument("--render", type=Path, default=None,
                   help="rewrite the markdown (and the verdict) of this results JSON without measuring anything")
    a = p.parse_args(argv)
    if a.render is not None:
        rerender(a.render)
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    main(["--only", "oracle-trained", *argv], a.out, a.quick, checkpoint=a.checkpoint, baseline=a.baseline, work=a.work,
         notes=a.note)


if __name__ == "__main__":  # pragma: no cover
    _cli(sys.argv[1:])
