"""The autoregressive baseline: a GPT-2 on DiffusionBERT's tokenizer, data and trainer.

The network is a Hugging Face ``GPT2LMHeadModel`` of the same width and depth as the BERT it is
compared with (hidden size, layers, heads and feed-forward size copied from the BERT config) and
the same WordPiece vocabulary. It reads the same encoded sentences as DiffusionBERT,
``[CLS] x [SEP] [PAD]...``: ``[CLS]`` is the start token, the model predicts every token of ``x``
and the closing ``[SEP]``; ``[PAD]`` positions are never scored.

* :func:`ar_loss`: mean next-token cross-entropy over the predicted tokens of a batch.
* :func:`ar_perplexity`: the exact test perplexity, per word (whitespace words of the original
  sentences, like :func:`dbert_model.evaluate.elbo_perplexity`) and per token (WordPiece tokens
  plus ``[SEP]``), on the sentences that fit whole in ``max_len``.
* :func:`sample_ar`: sampling with a KV cache (dynamic, or static: compiled by ``generate`` on a
  GPU) into the same ``[n, seq_len]`` canvas DiffusionBERT fills, so
  :func:`dbert_model.generation.decode` reads both alike.

A checkpoint is a dbert run directory (:func:`dbert_model.checkpoint.save_checkpoint`: step
directories and a ``latest`` pointer) whose current checkpoint's ``config.json`` is a GPT-2
config; :func:`load_ar` loads it, :func:`is_ar_checkpoint` tells it apart from a DiffusionBERT.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from dbert_kernels import Sampling

from .arch import DEFAULT_SAMPLING, Architecture, Loaded, StepLoss
from .data import EncodedSplit
from .evaluate import whole_only
from .settings import DiffusionSettings

__all__ = [
    "ARCHS",
    "ARLoss",
    "GPT2Architecture",
    "LoadedAR",
    "gpt2_config_like",
    "build_gpt2",
    "ar_loss",
    "ar_perplexity",
    "sample_ar",
    "load_ar",
    "is_ar_checkpoint",
]

#: The built-in architectures of :class:`dbert_model.settings.TrainConfig.arch` (the registry,
#: :func:`dbert_model.arch.architecture_names`, may hold more).
ARCHS = ("diffusion", "gpt2")
#: ``cache`` values of :func:`sample_ar`.
CACHES = ("dynamic", "static")


def gpt2_config_like(bert_config: Any, settings: DiffusionSettings) -> Any:
    """A ``GPT2Config`` with ``bert_config``'s width, depth, heads, feed-forward size and dropout.

    Vocabulary and special ids come from ``settings`` (``[CLS]`` starts, ``[SEP]`` ends a
    sentence); positions: ``settings.max_len``.
    """
    from transformers import GPT2Config

    sp = settings.special_ids
    dropout = float(getattr(bert_config, "hidden_dropout_prob", 0.1))
    return GPT2Config(
        vocab_size=settings.vocab_size, n_positions=settings.max_len, n_embd=int(bert_config.hidden_size),
        n_layer=int(bert_config.num_hidden_layers), n_head=int(bert_config.num_attention_heads),
        n_inner=int(bert_config.intermediate_size), resid_pdrop=dropout, embd_pdrop=dropout,
        attn_pdrop=float(getattr(bert_config, "attention_probs_dropout_prob", dropout)),
        bos_token_id=sp["cls"], eos_token_id=sp["sep"], pad_token_id=sp["pad"], tie_word_embeddings=True,
    )


def _bert_config(source: Any) -> Any:
    """The config of a BERT ``source`` as :func:`dbert_model.build.build_masked_lm` accepts it."""
    from transformers import AutoConfig, PretrainedConfig

    from .build import bert_base_config
    from .tokenizer import minilm_path

    if isinstance(source, PretrainedConfig):
        return source
    if isinstance(source, dict):
        return bert_base_config(**source)
    if source == "bert-base":
        return bert_base_config()
    path = minilm_path() if source == "minilm" else Path(source)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model config at {path}: pass 'minilm', 'scratch', 'tiny', 'bert-base' or a model directory")
    return AutoConfig.from_pretrained(str(path), local_files_only=True)


def build_gpt2(source: Any, settings: DiffusionSettings) -> Any:
    """A randomly initialised ``GPT2LMHeadModel`` shaped like the BERT of ``source`` (train mode).

    ``source``: a BERT config, a dict of ``BertConfig`` fields, ``"minilm"`` (its size; GPT-2
    gets no pretrained weights: none exist for this vocabulary), ``"bert-base"`` or a directory.
    """
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel(gpt2_config_like(_bert_config(source), settings))


@dataclass
class ARLoss:
    """Result of :func:`ar_loss`: ``loss`` (mean NLL per predicted token, differentiable),
    ``nll`` ``[B]`` summed NLL per sentence (detached), ``tokens`` ``[B]`` predicted tokens per sentence."""

    loss: torch.Tensor
    nll: torch.Tensor
    tokens: torch.Tensor


def ar_loss(model: Any, ids: torch.Tensor, pad_id: int, *, shard: slice | None = None) -> ARLoss:
    """Next-token cross-entropy of ``ids`` ``[B, L]`` (``[CLS] x [SEP] [PAD]...``), pads excluded.

    Padding is only on the right and attention is causal, so the batch is cut to its longest
    sentence and the result equals the unpadded computation of each sentence.

    ``shard``: score only these rows of the batch (data-parallel training: each process passes
    its rows of the global batch); ``loss`` keeps the whole batch's normaliser (its predicted
    tokens), so the shards' losses sum to the whole batch's loss; ``nll`` and ``tokens`` are the
    shard's rows.
    """
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise ValueError(f"ids must be [B, L] with L >= 2, got {tuple(ids.shape)}")
    total = int((ids[:, 1:] != pad_id).sum())
    if shard is not None:
        ids = ids[shard]
    length = int((ids != pad_id).sum(1).max())
    ids = ids[:, : max(length, 2)]
    targets = ids[:, 1:]
    keep = targets != pad_id
    inputs = ids[:, :-1]
    logits = model(input_ids=inputs, attention_mask=(inputs != pad_id).long()).logits
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    nll = (ce.view(targets.shape) * keep).sum(1)
    tokens = keep.sum(1)
    return ARLoss(loss=nll.sum() / max(total, 1), nll=nll.detach(), tokens=tokens)


@torch.no_grad()
def ar_perplexity(
    model: Any, split: EncodedSplit, pad_id: int, *, batch_size: int = 64, max_sentences: int | None = None,
) -> dict[str, float]:
    """Exact negative log-likelihood of whole sentences: per sentence, per word and per token.

    Returns ``sentences``, ``skipped_truncated``, ``tokens`` (predicted: WordPieces + ``[SEP]``),
    ``nll_per_sentence``, ``nats_per_word``, ``nats_per_token``, ``perplexity`` (per word) and
    ``perplexity_per_token``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    split, skipped = whole_only(split)
    n = len(split) if max_sentences is None else min(len(split), max_sentences)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        for start in range(0, n, batch_size):
            out = ar_loss(model, split.ids[start : min(start + batch_size, n)].to(device), pad_id)
            total += float(out.nll.double().sum())
            tokens += int(out.tokens.sum())
    finally:
        model.train(was_training)
    words = float(split.words[:n].sum())
    return {
        "sentences": float(n), "skipped_truncated": float(skipped), "tokens": float(tokens),
        "nll_per_sentence": total / n, "nats_per_word": total / words, "nats_per_token": total / tokens,
        "perplexity": float(torch.tensor(total / words).clamp(max=700).exp()),
        "perplexity_per_token": float(torch.tensor(total / tokens).clamp(max=700).exp()),
    }


def _banned(tokenizer: Any, settings: DiffusionSettings) -> list[int]:
    from .generation import banned_ids

    return sorted({*banned_ids(tokenizer, settings), settings.special_ids["pad"]})


@torch.no_grad()
def sample_ar(
    model: Any,
    settings: DiffusionSettings,
    tokenizer: Any,
    *,
    n: int = 4,
    seq_len: int | None = None,
    top_k: int | None = DEFAULT_SAMPLING.top_k,
    temperature: float = DEFAULT_SAMPLING.temperature,
    seed: int = DEFAULT_SAMPLING.seed,
    cache: str = "dynamic",
    top_p: float | None = None,
) -> torch.Tensor:
    """``[n, seq_len]`` int64 ids: ``[CLS]`` then ``seq_len - 1`` sampled tokens (KV cache).

    Every row gets exactly ``seq_len - 1`` new tokens (the same work as a DiffusionBERT canvas
    of ``seq_len``); a row's sentence ends at its first ``[SEP]``
    (:func:`dbert_model.generation.decode` cuts there). Never sampled: ``[CLS]``, ``[MASK]``,
    ``[UNK]``, ``[PAD]``, ``[unused*]``. ``cache``: ``"dynamic"`` (the default KV cache, eager) or
    ``"static"`` (a static cache, which ``generate`` compiles with ``torch.compile`` on a GPU; not
    compiled on the CPU).
    Seeded through torch's global RNG (``torch.manual_seed(seed)``).
    """
    from transformers import GenerationConfig

    from .build import _quiet_transformers

    seq_len = seq_len or settings.max_len
    if n < 1 or seq_len < 2:
        raise ValueError(f"n must be >= 1 and seq_len >= 2, got n={n}, seq_len={seq_len}")
    if seq_len > int(model.config.n_positions):
        raise ValueError(f"seq_len {seq_len} exceeds the model's {model.config.n_positions} positions: use a shorter --seq-len")
    if cache not in CACHES:
        raise ValueError(f"cache must be one of {CACHES}, got {cache!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    device = next(model.parameters()).device
    extra: dict[str, Any] = {"disable_compile": cache == "dynamic" or device.type != "cuda"}
    if cache == "static":
        extra["cache_implementation"] = "static"
    sp = settings.special_ids
    gen = GenerationConfig(
        do_sample=True, top_k=top_k or 0, top_p=top_p or 1.0, temperature=temperature, max_new_tokens=seq_len - 1,
        # ``generate`` would fill an unset stop id from the model's config ([SEP]) and end rows
        # there: the stop id is [MASK], which is never sampled, so every row runs to seq_len.
        eos_token_id=sp["mask"], pad_token_id=sp["pad"], bos_token_id=sp["cls"],
        suppress_tokens=_banned(tokenizer, settings), **extra,
    )
    prompt = torch.full((n, 1), sp["cls"], dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    try:
        with _quiet_transformers():
            return model.generate(prompt, attention_mask=torch.ones_like(prompt), generation_config=gen)
    finally:
        model.train(was_training)


@dataclass
class LoadedAR(Loaded):
    """What :func:`load_ar` returns: the GPT-2 (eval mode), its settings (vocabulary, special
    ids, ``max_len``), tokenizer, training token counts and directory."""

    arch: str = "gpt2"


def is_ar_checkpoint(path: str | Path) -> bool:
    """True when ``path`` (a run directory or a checkpoint's files, as
    :func:`dbert_model.checkpoint.resolve_checkpoint` reads it) holds a GPT-2 checkpoint."""
    from .checkpoint import resolve_checkpoint

    resolved = resolve_checkpoint(path)
    if resolved is None or not (resolved / "config.json").is_file():
        return False
    try:
        return json.loads((resolved / "config.json").read_text(encoding="utf-8")).get("model_type") == "gpt2"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def load_ar(path: str | Path, *, device: torch.device | str | None = None, tokenizer: Any = None) -> LoadedAR:
    """Load a GPT-2 checkpoint written by the trainer (``dbert train --arch gpt2``).

    ``path``: a run directory (its current checkpoint is loaded), a step directory or a directory
    in the flat layout, as for :func:`dbert_model.checkpoint.load_checkpoint`; ``LoadedAR.path``
    is the directory the files were read from. ``tokenizer``: use this one instead of the
    checkpoint's own (it must have the same vocabulary).
    """
    from .checkpoint import resolve_checkpoint

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (train one with `dbert train --arch gpt2 --out {path}`)")
    if not is_ar_checkpoint(path):
        raise ValueError(f"{path} is not a GPT-2 checkpoint (train one with `dbert train --arch gpt2`)")
    return GPT2Architecture().load(resolve_checkpoint(path) or path, device=device, tokenizer=tokenizer)


class GPT2Architecture(Architecture):
    """The GPT-2 baseline as an :class:`~dbert_model.arch.Architecture` (registry name ``"gpt2"``)."""

    name = "gpt2"
    loaded = LoadedAR
    model_types = ("gpt2",)

    def build(self, cfg: Any, settings: DiffusionSettings) -> Any:
        from .diffusion import init_source

        return build_gpt2(init_source(cfg, settings.vocab_size), settings)

    def describe(self, settings: DiffusionSettings) -> str:
        return "GPT-2"

    def network(self, path: Path) -> Any:
        from transformers import AutoConfig, GPT2LMHeadModel

        return GPT2LMHeadModel(AutoConfig.from_pretrained(str(path), local_files_only=True))

    def loss(self, model: Any, ids: torch.Tensor, *, settings: DiffusionSettings, info: torch.Tensor, cfg: Any,
             step: int, shard: slice) -> StepLoss:
        """Next-token CE: every predicted token counts as a scored ("masked") position."""
        out = ar_loss(model, ids, settings.special_ids["pad"], shard=shard)
        return StepLoss(out.loss, float(out.nll.sum()), float(out.tokens.sum()))

    def validate(self, model: Any, settings: DiffusionSettings, info: torch.Tensor, split: EncodedSplit,
                 cfg: Any) -> tuple[dict[str, float], str]:
        res = ar_perplexity(model, split, settings.special_ids["pad"], batch_size=cfg.batch_size,
                            max_sentences=cfg.eval_sentences)
        return res, (f"NLL {res['nll_per_sentence']:.2f} nats/sentence, {res['nats_per_word']:.3f} nats/word, "
                     f"PPL {res['perplexity']:.1f} (exact)")

    def sample(self, model: Any, settings: DiffusionSettings, tokenizer: Any, *, n: int,
               sampling: Sampling = DEFAULT_SAMPLING, seq_len: int | None = None, steps: int = 32,
               progress: bool = False, token_counts: torch.Tensor | None = None,
               **options: Any) -> tuple[torch.Tensor, Any]:
        """:func:`sample_ar` with ``sampling``'s temperature, top-k and seed (``steps`` and the
        diffusion decoding ``options`` do not apply; no statistics)."""
        return sample_ar(model, settings, tokenizer, n=n, seq_len=seq_len, top_k=sampling.top_k,
                         temperature=sampling.temperature, seed=sampling.seed, top_p=sampling.top_p), None

    def perplexity(self, loaded: Any, split: EncodedSplit, *, batch_size: int, elbo_samples: int = 1, seed: int = 0,
                   progress: bool = False, backend: str = "auto") -> dict[str, float]:
        return ar_perplexity(loaded.model, split, loaded.settings.special_ids["pad"], batch_size=batch_size)

    def report(self, results: dict[str, Any], loaded: Any, *, elbo_samples: int = 1) -> list[str]:
        r = results
        return [f"  NLL          {r['nll_per_sentence']:.2f} nats/sentence, {r['nats_per_word']:.3f} nats/word",
                f"  perplexity   {r['perplexity']:.2f} per word, {r['perplexity_per_token']:.2f} per token (exact)"]

    def sampling_note(self, steps: int) -> str:
        return "KV cache"
