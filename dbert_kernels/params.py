"""The resolved sampling settings that every backend's ``sample`` reads.

:class:`SamplingParams` is built once by the public ops (:func:`dbert_kernels.sample_absorbing`)
after validation; the reference, native (C++ ``SampleParams``) and Triton backends read the same
fields, so "off" has one spelling everywhere: ``top_k == 0`` and ``top_p == 1.0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["SamplingParams", "float32_inverse"]

_FLOAT32_MAX = 3.4028234663852886e38  # torch.finfo(torch.float32).max


def _round_to_float32(value: float) -> float:
    """``value`` (finite, >= 0) rounded to the nearest float32, ties to even; ``inf`` on overflow.

    Plain Python arithmetic (no tensor, no host synchronisation), so that ``torch.compile`` folds it.
    """
    if value == 0.0:
        return 0.0
    mantissa, exponent = math.frexp(value)  # value = mantissa * 2**exponent, mantissa in [0.5, 1)
    bits = 24 - max(0, -125 - exponent)  # fewer mantissa bits below float32's normal range
    rounded = math.ldexp(round(math.ldexp(mantissa, bits)), exponent - bits)
    return math.inf if rounded > _FLOAT32_MAX else rounded


def float32_inverse(temperature: float) -> float:
    """``1 / temperature`` rounded to float32 (as a Python float); ``inf`` when it overflows."""
    inv = 1.0 / temperature if temperature > 0 else math.inf
    return math.inf if math.isinf(inv) else _round_to_float32(inv)


@dataclass(frozen=True)
class SamplingParams:
    """How a revealed row is sampled (inputs already validated).

    Attributes:
        inv_temperature: ``1 / T`` rounded to float32; 1.0 when greedy (the confidence is then
            the probability at temperature 1).
        greedy: the token is the argmax (``temperature == 0``, or a temperature whose ``1 / T``
            overflows float32).
        top_k: keep the ``top_k`` largest logits (ties kept); 0: off.
        top_p: nucleus mass in (0, 1]; 1.0: off.
        banned: ``[V]`` bool on the logits' device, True at ids never returned (``mask_id`` included).
        with_entropy: also return the entropy of the filtered distribution.
        with_margin: also return the top-1 minus top-2 probability of the filtered distribution.
    """

    inv_temperature: float
    greedy: bool
    top_k: int
    top_p: float
    banned: torch.Tensor
    with_entropy: bool = False
    with_margin: bool = False

    @classmethod
    def create(
        cls,
        *,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        banned: torch.Tensor,
        with_entropy: bool = False,
        with_margin: bool = False,
    ) -> SamplingParams:
        """Resolve validated user settings: ``None`` filters become off, and a temperature whose
        ``1 / T`` overflows float32 (or is 0) becomes greedy."""
        inv_t = float32_inverse(float(temperature))
        greedy = math.isinf(inv_t)
        return cls(
            inv_temperature=1.0 if greedy else inv_t,
            greedy=greedy,
            top_k=0 if top_k is None else int(top_k),
            top_p=1.0 if top_p is None else float(top_p),
            banned=banned,
            with_entropy=bool(with_entropy),
            with_margin=bool(with_margin),
        )
