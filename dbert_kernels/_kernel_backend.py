"""The adapter shared by the two kernel backends (native C++ and Triton).

Both backends expose the three ops as ``torch.library`` ops that take the Philox seed and offset as
one ``rng`` [2] int64 tensor, the spindle form as an integer code and the sampling filters as plain
scalars (the fields of :class:`~dbert_kernels.params.SamplingParams`). :class:`KernelBackend` turns
them into the backend functions of :mod:`dbert_kernels.reference`'s signatures and semantics
(inputs already validated by :mod:`dbert_kernels.ops`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .params import SamplingParams
from .random import SeedLike, rng_tensor
from .schedules import SPINDLE_FORM_CODES

__all__ = ["KernelBackend", "empty_sample_outputs"]


def empty_sample_outputs(
    logits: torch.Tensor, with_entropy: bool, with_margin: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uninitialised outputs of a sampling op for ``logits`` [R, V]: tokens [R] int64, confidence
    [R] float32, entropy and margin [R] float32 when asked for, else [0]."""
    rows = logits.shape[0]
    return (
        logits.new_empty(rows, dtype=torch.int64),
        logits.new_empty(rows, dtype=torch.float32),
        logits.new_empty(rows if with_entropy else 0, dtype=torch.float32),
        logits.new_empty(rows if with_margin else 0, dtype=torch.float32),
    )


class KernelBackend:
    """A backend made of three kernel ops (see the module docstring for their arguments).

    ``checks_logits``: the sampling kernel checks every row it reads (NaN / +inf, no finite allowed
    logit; a bad row comes back as token -1), so :func:`dbert_kernels.ops.sample_absorbing` skips
    its own pass over the logits (read as ``CHECKS_LOGITS``).
    """

    def __init__(
        self,
        spindle_mask_op: Callable[..., tuple[torch.Tensor, torch.Tensor]],
        sample_op: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
        topk_unmask_op: Callable[..., torch.Tensor],
        checks_logits: bool = False,
    ) -> None:
        self._spindle_mask_op = spindle_mask_op
        self._sample_op = sample_op
        self._topk_unmask_op = topk_unmask_op
        self.CHECKS_LOGITS = checks_logits

    def spindle_mask(self, ids, base, amp, info, protected, form: str, mask_id: int, seed: SeedLike,
                     offset: SeedLike) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`dbert_kernels.reference.spindle_mask` on the kernel."""
        rng = rng_tensor(seed, offset, ids.device)
        return self._spindle_mask_op(ids, base, amp, info, protected, rng, SPINDLE_FORM_CODES[form], mask_id)

    def sample(self, logits, ids, unmask_prob, row_index, mask_id: int, params: SamplingParams,
               seed: SeedLike, offset: SeedLike):
        """:func:`dbert_kernels.reference.sample` on the kernel: ``(tokens, confidence, entropy or
        None, margin or None)``."""
        rng = rng_tensor(seed, offset, logits.device)
        tokens, conf, entropy, margin = self._sample_op(
            logits, ids, unmask_prob, params.banned, row_index, rng, mask_id, params.inv_temperature,
            params.greedy, params.top_k, params.top_p, params.with_entropy, params.with_margin,
        )
        return tokens, conf, entropy if params.with_entropy else None, margin if params.with_margin else None

    def topk_unmask(self, ids, candidates, confidence, k, mask_id: int, gumbel_temperature: float,
                    seed: SeedLike, offset: SeedLike) -> torch.Tensor:
        """:func:`dbert_kernels.reference.topk_unmask` on the kernel: new ids [B, L]."""
        rng = rng_tensor(seed, offset, ids.device)
        return self._topk_unmask_op(
            ids, candidates, confidence, k.to(torch.int64), rng, mask_id, float(gumbel_temperature)
        )
