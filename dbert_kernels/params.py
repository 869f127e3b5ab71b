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

_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def float32_inverse(temperature: float) -> float:
    """``1 / temperature`` rounded to float32 (as a Python float); ``inf`` when it overflows."""
    inv = 1.0 / temperature if temperature > 0 else math.inf
    if math.isinf(inv):
        return math.inf
    return float(torch.tensor(inv, dtype=torch.float32))


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
        greedy = math.isinf(inv_t) or inv_t > _FLOAT32_MAX
        return cls(
            inv_temperature=1.0 if greedy else inv_t,
            greedy=greedy,
            top_k=0 if top_k is None else int(top_k),
            top_p=1.0 if top_p is None else float(top_p),
            banned=banned,
            with_entropy=bool(with_entropy),
            with_margin=bool(with_margin),
        )
