"""End to end: DiffusionBERT generation against GPT-2 decoding of the same size.

* DiffusionBERT: ``transformers.BertForMaskedLM`` with random weights, wrapped by
  :class:`dbert_kernels.HFMaskedLMDenoiser` (LM head only on the rows a step reveals) and run
  by :func:`dbert_kernels.generate` (posterior strategy, D3PM schedule, top-k as configured) on
  ``[CLS] n x [MASK] [SEP]``. A :class:`TimedDenoiser` times each model call, so the share of
  a step spent in the model (encoder + LM head) and in the sampler (everything else) is known.
* GPT-2: ``GPT2LMHeadModel`` with random weights generating the same ``n`` tokens after one
  BOS token with ``transformers``' ``generate`` (sampling, same top-k): ``kv-cache`` (the
  default dynamic KV cache, eager) and ``static-compile`` (static cache, which ``generate``
  compiles with ``torch.compile`` on a GPU: the strongest stock baseline); ``static`` is the
  static cache without compilation (the CPU stand-in, where compiling costs minutes).

Speed does not depend on the weights, so random weights are used (no download needed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

import dbert_kernels as dk

from .configs import E2EConfig
from .timing import TimedDenoiser, summarize, synchronize

__all__ = ["TimedDenoiser", "build_bert", "build_gpt2", "diffusion_runs", "gpt_runs"]

CLS_ID, SEP_ID, MASK_ID = 101, 102, 103
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_bert(cfg: E2EConfig, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A randomly initialised BertForMaskedLM of ``cfg``'s size, in eval mode on ``device``."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    conf = BertConfig(
        vocab_size=cfg.bert_vocab, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
        num_attention_heads=max(1, cfg.hidden // 64), intermediate_size=4 * cfg.hidden,
        max_position_embeddings=512,
    )
    model = BertForMaskedLM(conf).to(device=device, dtype=_DTYPES[cfg.dtype]).eval()
    return model, {"params": _param_count(model), "layers": cfg.layers, "hidden": cfg.hidden,
                   "vocab": cfg.bert_vocab}


def build_gpt2(cfg: E2EConfig, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A randomly initialised GPT2LMHeadModel of ``cfg``'s size, in eval mode on ``device``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    conf = GPT2Config(
        vocab_size=cfg.gpt_vocab, n_positions=1024, n_embd=cfg.hidden, n_layer=cfg.layers,
        n_head=max(1, cfg.hidden // 64), bos_token_id=cfg.gpt_vocab - 1, eos_token_id=cfg.gpt_vocab - 1,
    )
    model = GPT2LMHeadModel(conf).to(device=device, dtype=_DTYPES[cfg.dtype]).eval()
    return model, {"params": _param_count(model), "layers": cfg.layers, "hidden": cfg.hidden,
                   "vocab": cfg.gpt_vocab}


def _template(n_tokens: int) -> torch.Tensor:
    fixed = torch.full((n_tokens + 2,), -1, dtype=torch.int64)
    fixed[0], fixed[-1] = CLS_ID, SEP_ID
    return fixed


def diffusion_runs(
    model: torch.nn.Module, cfg: E2EConfig, device: torch.device, backends: list[str]
) -> Iterator[dict[str, Any]]:
    """Yield one result per (tokens, batch, steps, backend): latency, tokens/s, model share."""
    timed = TimedDenoiser(dk.HFMaskedLMDenoiser(model), device)
    for n_tokens in cfg.tokens:
        fixed = _template(n_tokens)
        for batch in cfg.batches:
            for steps in cfg.steps:
                for backend in backends:
                    lat, model_s = [], []
                    for i in range(cfg.warmup + cfg.repeats):
                        timed.watch.reset()
                        synchronize(device)
                        t0 = time.perf_counter()
                        out = dk.generate(
                            timed, mask_id=MASK_ID, batch_size=batch, seq_len=n_tokens + 2, steps=steps,
                            top_k=cfg.top_k, fixed=fixed, seed=i, progress=False, backend=backend,
                            device=device,
                        )
                        synchronize(device)
                        if i >= cfg.warmup:
                            lat.append(time.perf_counter() - t0)
                            model_s.append(timed.watch.total_s())
                    if out.shape != (batch, n_tokens + 2) or bool((out == MASK_ID).any()):
                        raise RuntimeError("DiffusionBERT generation left [MASK] tokens: benchmark invalid")
                    stats = summarize(lat)
                    share = summarize([m / t for m, t in zip(model_s, lat, strict=True)]).median_s
                    yield {
                        "tokens": n_tokens, "batch": batch, "steps": steps, "backend": backend,
                        **stats.as_dict(), "tokens_per_s": batch * n_tokens / stats.median_s,
                        "ms_per_step": 1e3 * stats.median_s / steps,
                        "model_share": share, "sampler_share": 1.0 - share,
                    }


def _gpt_generate(model: torch.nn.Module, variant: str, batch: int, n_tokens: int, top_k: int | None,
                  device: torch.device, seed: int) -> torch.Tensor:
    from transformers import GenerationConfig

    eos = model.config.eos_token_id
    extra: dict[str, Any] = {}
    if variant == "kv-cache":
        extra["disable_compile"] = True
    elif variant == "static":
        extra.update(cache_implementation="static", disable_compile=True)
    elif variant == "static-compile":
        extra["cache_implementation"] = "static"
    else:
        raise ValueError(f"unknown GPT variant {variant!r}: use kv-cache, static or static-compile")
    gen_cfg = GenerationConfig(
        do_sample=True, top_k=top_k or 0, top_p=1.0, temperature=1.0, max_new_tokens=n_tokens,
        min_new_tokens=n_tokens, pad_token_id=eos, eos_token_id=eos, bos_token_id=eos, **extra,
    )
    torch.manual_seed(seed)
    prompt = torch.full((batch, 1), eos, dtype=torch.long, device=device)
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=gen_cfg)


def gpt_runs(
    model: torch.nn.Module, cfg: E2EConfig, device: torch.device, variant: str
) -> Iterator[dict[str, Any]]:
    """Yield one result per (tokens, batch) for GPT-2 ``variant``: latency and tokens/s.

    ``static-compile`` gets one extra warm-up call per shape (the compilation happens there).
    """
    if variant == "static-compile" and device.type != "cuda":
        raise ValueError("static-compile needs a CUDA device (generate compiles only there)")
    warmup = cfg.warmup + (1 if variant == "static-compile" else 0)
    for n_tokens in cfg.tokens:
        for batch in cfg.batches:
            lat = []
            for i in range(warmup + cfg.repeats):
                synchronize(device)
                t0 = time.perf_counter()
                out = _gpt_generate(model, variant, batch, n_tokens, cfg.top_k, device, i)
                synchronize(device)
                if i >= warmup:
                    lat.append(time.perf_counter() - t0)
            if out.shape != (batch, n_tokens + 1):
                raise RuntimeError(f"GPT-2 generated {tuple(out.shape)} ids, expected {(batch, n_tokens + 1)}")
            stats = summarize(lat)
            yield {
                "variant": variant, "tokens": n_tokens, "batch": batch, **stats.as_dict(),
                "tokens_per_s": batch * n_tokens / stats.median_s,
            }
