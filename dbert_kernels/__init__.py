"""dbert-kernels: fast, reproducible sampling for DiffusionBERT-style masked diffusion LMs.

Public API:

* :class:`Schedule`, :func:`token_information`: noise schedules (D3PM, cosine, spindle).
* :func:`spindle_mask`: the forward process (masking).
* :func:`sample_absorbing`, :func:`sample`, :func:`unmask_decision`: categorical sampling with
  temperature / top-k / top-p / banned ids, fused with the absorbing posterior step.
* :func:`topk_unmask`: confidence-based unmasking.
* :func:`generate`: the reverse-process loop for any denoiser (:func:`as_denoiser`), over the
  strategies of :mod:`dbert_kernels.strategies`, with the block cache of :mod:`dbert_kernels.cache`.

Every op takes ``backend="auto" | "reference" | "triton" | "native"``; see
:mod:`dbert_kernels.backends`.
"""

from ._validation import BERT_UNCASED_SPECIAL_IDS
from .backends import available_backends
from .cache import BlockCache, bert_layers, cached_encoder_pass, rows_in_span
from .denoisers import BigramDenoiser, Denoiser, HFMaskedLMDenoiser, as_denoiser
from .markov import MarkovChain, OracleDenoiser
from .ops import sample, sample_absorbing, spindle_mask, topk_unmask, unmask_decision
from .params import SamplingParams
from .sampler import GenerateStats, build_template, generate, make_strategy
from .schedules import Schedule, token_information
from .strategies import REVEAL_RULES, STRATEGIES, Strategy, authors_reveal_probability

__version__ = "0.1.0"

__all__ = [
    "BERT_UNCASED_SPECIAL_IDS",
    "BigramDenoiser",
    "BlockCache",
    "authors_reveal_probability",
    "GenerateStats",
    "REVEAL_RULES",
    "STRATEGIES",
    "Strategy",
    "Denoiser",
    "HFMaskedLMDenoiser",
    "MarkovChain",
    "OracleDenoiser",
    "SamplingParams",
    "Schedule",
    "as_denoiser",
    "available_backends",
    "bert_layers",
    "build_template",
    "cached_encoder_pass",
    "generate",
    "make_strategy",
    "rows_in_span",
    "sample",
    "sample_absorbing",
    "spindle_mask",
    "token_information",
    "topk_unmask",
    "unmask_decision",
]
