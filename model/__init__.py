"""dbert_model: the DiffusionBERT denoiser, training, generation and evaluation.

Python API (the ``dbert`` command wraps it):

* :func:`build_model` / :func:`build_denoiser`: a DiffusionBERT from ``"minilm"`` (pretrained),
  ``"bert-base"`` (random, bert-base size), a local directory, a config, or a checkpoint; with
  ``time_design`` ``"tad"`` / ``"lte"`` / ``"pte"``.
* :func:`load_checkpoint` / :func:`save_checkpoint`: checkpoints (safetensors + dbert.json).
* :class:`TrainConfig` + :func:`train`: training with every switch (schedule, loss, time design, init).
* :func:`sample_ids` / :func:`decode`: generation through :func:`dbert_kernels.generate`.
* :func:`elbo_perplexity`, :func:`bleu4`, :func:`self_bleu`: evaluation.
* :func:`load_for_bench`: the entry point of ``bench/quality.py`` (steps vs time vs quality).
"""

from .bench_api import BenchModel, load_for_bench
from .build import (
    DiffusionBertDenoiser,
    bert_base_config,
    build_denoiser,
    build_masked_lm,
    build_model,
    tiny_config,
)
from .checkpoint import LoadedModel, check_vocabulary, load_checkpoint, save_checkpoint
from .data import encode, load_corpus, token_counts
from .evaluate import bleu4, elbo_perplexity, self_bleu
from .generation import decode, sample_ids
from .losses import LossOutput, diffusion_loss
from .network import DiffusionBert
from .settings import DiffusionSettings
from .tokenizer import VocabularyMismatchError, load_tokenizer, minilm_path
from .train import TrainConfig, TrainResult, train

__all__ = [
    "BenchModel",
    "DiffusionBert",
    "DiffusionBertDenoiser",
    "DiffusionSettings",
    "LoadedModel",
    "LossOutput",
    "TrainConfig",
    "TrainResult",
    "VocabularyMismatchError",
    "bert_base_config",
    "bleu4",
    "build_denoiser",
    "build_masked_lm",
    "build_model",
    "check_vocabulary",
    "decode",
    "diffusion_loss",
    "elbo_perplexity",
    "encode",
    "load_checkpoint",
    "load_corpus",
    "load_for_bench",
    "load_tokenizer",
    "minilm_path",
    "sample_ids",
    "save_checkpoint",
    "self_bleu",
    "tiny_config",
    "token_counts",
    "train",
]
