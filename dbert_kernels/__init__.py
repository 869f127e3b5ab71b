"""dbert-kernels: fast, reproducible sampling for DiffusionBERT-style masked diffusion LMs.

Public API:

* :class:`Schedule`, :func:`token_information`: noise schedules (D3PM, cosine, spindle).
* :func:`spindle_mask`: the forward process (masking).
* :func:`sample_absorbing`, :func:`sample`, :func:`unmask_decision`: categorical sampling with
  temperature / top-k / top-p / banned ids, fused with the absorbing posterior step.
* :func:`topk_unmask`: confidence-based unmasking.
* :func:`generate`: the reverse-process loop for any denoiser (:func:`as_denoiser`), with a
  :class:`Sampling` (how tokens are drawn) and a :class:`Strategy` (which positions each step
  reveals: the registry :data:`STRATEGIES`, :func:`register_strategy`, :func:`make_strategy`,
  their options :data:`OPTIONS`), and the block cache of :mod:`dbert_kernels.cache`.

Every op takes ``backend="auto" | "reference" | "triton" | "native"`` or a backend added with
:func:`register_backend`; see :mod:`dbert_kernels.backends`.
"""

from ._validation import BERT_UNCASED_SPECIAL_IDS
from .backends import available_backends, backend_names, register_backend
from .cache import CACHE_MODES, BlockCache, bert_layers, cached_encoder_pass, rows_in_span
from .denoisers import BigramDenoiser, Denoiser, HFMaskedLMDenoiser, as_denoiser
from .markov import MarkovChain, OracleDenoiser
from .ops import sample, sample_absorbing, spindle_mask, topk_unmask, unmask_decision
from .params import SamplingParams
from .sampler import GenerateStats, build_template, generate
from .schedules import Schedule, token_information
from .strategies import (
    CONFIDENCE_MEASURES,
    DEFAULT_STRATEGY,
    OPTIONS,
    REVEAL_RULES,
    STRATEGIES,
    Sampling,
    StepState,
    Strategy,
    authors_reveal_probability,
    make_strategy,
    register_strategy,
)
from .threads import default_threads, use_default_threads

__version__ = "0.1.0"

__all__ = [
    "BERT_UNCASED_SPECIAL_IDS",
    "CACHE_MODES",
    "CONFIDENCE_MEASURES",
    "DEFAULT_STRATEGY",
    "OPTIONS",
    "Sampling",
    "StepState",
    "backend_names",
    "default_threads",
    "use_default_threads",
    "register_backend",
    "register_strategy",
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
