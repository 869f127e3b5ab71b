"""Noise schedules of the absorbing-state forward process.

A schedule gives alphabar(t), the probability that a token is still itself (not ``[MASK]``) at
time ``t`` in ``[0, T]``. Time is continuous: any float in ``[0, T]`` is valid, and ``T`` only sets
the scale (the sampler skips steps with a stride ``T / steps``).

* ``base="linear"``: the D3PM absorbing / "mutual information" schedule, alphabar = 1 - t/T.
* ``base="cosine"``: alphabar = cos(pi/2 * t/T)^2 (improved DDPM), exactly 1 at 0 and 0 at T.
* ``spindle_lambda > 0`` adds DiffusionBERT's spindle term per token (see :meth:`token_alphabar`):
  informative (rare) tokens get a lower keep probability, so they are masked first and
  generated last. Two forms exist (``spindle_form``):

  - ``"code"`` (default: the authors' released code, which their trained numbers come from):
    ``p_i = clip(alphabar_t + lambda sin(pi t/T) (w_i - mean_j w_j), 0, 0.999)`` with
    ``w = log(count+1) / max log(count+1)`` (frequent tokens have large ``w``). Before clipping,
    the sentence mean is exactly alphabar_t.
  - ``"paper"``: ``p_i = clip(alphabar_t - lambda sin(pi t/T) (1 - mean_j H_j / H_i), 0, 1)`` with
    ``H = -log freq``. Note: by the AM-HM inequality its sentence mean is *at least* alphabar_t,
    with equality only when every token of the sentence carries the same information.

Token information comes from :func:`token_information` (counts over the training corpus).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = ["Schedule", "token_information", "spindle_keep_probability", "SPINDLE_CODE_CLIP", "SPINDLE_FORM_CODES"]

#: Upper clip of the code-form per-token keep probability (the authors' value; csrc/ops.cpp's
#: kSpindleCodeClip mirrors it).
SPINDLE_CODE_CLIP = 0.999

#: Integer codes of the spindle forms passed to the compiled kernels.
SPINDLE_FORM_CODES = {"none": 0, "code": 1, "paper": 2}

TensorLike = torch.Tensor | float | int


@dataclass(frozen=True)
class Schedule:
    """An absorbing-state noise schedule.

    Args:
        T: the time horizon (> 0). ``t = 0`` is clean data, ``t = T`` is all ``[MASK]``.
        base: ``"linear"`` (D3PM, 1 - t/T) or ``"cosine"``.
        spindle_lambda: amplitude lambda of the spindle term; 0 disables it (plain schedule).
        spindle_form: ``"code"`` or ``"paper"`` (see the module docstring).
    """

    T: float = 1000.0
    base: Literal["linear", "cosine"] = "linear"
    spindle_lambda: float = 0.0
    spindle_form: Literal["code", "paper"] = "code"

    def __post_init__(self) -> None:
        if isinstance(self.T, bool) or not (isinstance(self.T, (int, float)) and math.isfinite(self.T) and self.T > 0):
            raise ValueError(f"Schedule T must be a finite number > 0, got {self.T!r}")
        if self.base not in ("linear", "cosine"):
            raise ValueError(f"Schedule base must be 'linear' or 'cosine', got {self.base!r}")
        lam = self.spindle_lambda
        if isinstance(lam, bool) or not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
            raise ValueError(f"spindle_lambda must be finite and >= 0, got {self.spindle_lambda!r}")
        if self.spindle_form not in ("code", "paper"):
            raise ValueError(f"spindle_form must be 'code' or 'paper', got {self.spindle_form!r}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def d3pm(cls, T: float = 1000.0) -> Schedule:
        """The D3PM absorbing schedule (alphabar = 1 - t/T), the paper's baseline."""
        return cls(T=T)

    @classmethod
    def cosine(cls, T: float = 1000.0) -> Schedule:
        """The cosine schedule, alphabar = cos(pi/2 t/T)^2."""
        return cls(T=T, base="cosine")

    @classmethod
    def spindle(
        cls, lam: float = 0.3, form: Literal["code", "paper"] = "code", T: float = 1000.0
    ) -> Schedule:
        """DiffusionBERT's spindle schedule on the linear base (default lambda 0.3, code form)."""
        return cls(T=T, base="linear", spindle_lambda=lam, spindle_form=form)

    @property
    def is_spindle(self) -> bool:
        """True when the per-token spindle term is active."""
        return self.spindle_lambda > 0

    # ------------------------------------------------------------------ evaluation
    def _time(self, t: TensorLike) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=None if isinstance(t, torch.Tensor) else torch.float64)
        if not t.is_floating_point():
            t = t.to(torch.float64)
        if torch.isnan(t).any() or (t < 0).any() or (t > self.T).any():
            raise ValueError(
                f"time t must lie in [0, T] = [0, {self.T}]; got values in "
                f"[{t.min().item()}, {t.max().item()}]"
            )
        return t

    def alphabar(self, t: TensorLike) -> torch.Tensor:
        """Sentence-level keep probability alphabar(t) (same shape and float dtype as ``t``).

        Exactly 1 at t = 0, exactly 0 at t = T, non-increasing in between.
        """
        t = self._time(t)
        frac = t / self.T
        if self.base == "linear":
            out = 1.0 - frac
        else:
            out = torch.cos(frac * (math.pi / 2)) ** 2
        out = torch.where(frac >= 1, torch.zeros_like(out), out)
        return torch.where(frac <= 0, torch.ones_like(out), out)

    def spindle_amplitude(self, t: TensorLike) -> torch.Tensor:
        """S(t) = lambda * sin(pi t / T) (zeros when the spindle term is off)."""
        t = self._time(t)
        return self.spindle_lambda * torch.sin(t * (math.pi / self.T))

    def unmask_probability(self, s: TensorLike, t: TensorLike) -> torch.Tensor:
        """Probability that a position still masked at time t is revealed at time s <= t.

        (alphabar_s - alphabar_t) / (1 - alphabar_t) on the sentence-level schedule; 1 where
        alphabar_t = 1 (nothing should be masked there) and exactly 1 at s = 0.
        """
        s_t, t_t = self._time(s), self._time(t)
        if (s_t > t_t).any():
            raise ValueError("unmask_probability needs s <= t (the reverse process runs backwards)")
        ab_s, ab_t = self.alphabar(s_t), self.alphabar(t_t)
        denom = 1.0 - ab_t
        safe = torch.where(denom > 0, denom, torch.ones_like(denom))
        prob = torch.where(denom > 0, (ab_s - ab_t) / safe, torch.ones_like(denom))
        return prob.clamp(0.0, 1.0)

    def token_alphabar(
        self,
        t: TensorLike,
        info: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """Per-token keep probability.

        Args:
            t: times, shape ``[B]`` (or a scalar, broadcast to every row).
            info: ``[B, L]`` float token information of each position's clean token, as returned
                by :func:`token_information` for this schedule's ``spindle_form`` and gathered by
                token id. Ignored when the spindle term is off.
            valid: ``[B, L]`` bool, True for positions that count in the sentence mean (not pad
                or special tokens).

        Returns:
            ``[B, L]`` float32 keep probabilities (invalid positions get 1: they are never
            masked).
        """
        if info.dim() != 2 or valid.shape != info.shape:
            raise ValueError(
                f"info and valid must both be [B, L]; got {tuple(info.shape)} and "
                f"{tuple(valid.shape)}"
            )
        batch = info.shape[0]
        t = self._time(t).to(device=info.device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or have shape [B] = [{batch}], got {tuple(t.shape)}")
        base = self.alphabar(t).to(torch.float32)
        if not self.is_spindle:
            return spindle_keep_probability(base, torch.zeros_like(base), info, valid, "none")
        amp = self.spindle_amplitude(t).to(torch.float32)
        return spindle_keep_probability(base, amp, info.to(torch.float32), valid, self.spindle_form)


def spindle_keep_probability(
    base: torch.Tensor,
    amp: torch.Tensor,
    info: torch.Tensor,
    valid: torch.Tensor,
    form: str,
) -> torch.Tensor:
    """Per-token keep probability ``[B, L]`` from per-row ``base`` = alphabar(t) and ``amp`` = S(t).

    The one implementation of the spindle formulas (see the module docstring), shared by
    :meth:`Schedule.token_alphabar` and the reference masking op. ``base``/``amp``: ``[B]`` float32;
    ``info``: ``[B, L]`` float32 token information per position; ``valid``: ``[B, L]`` bool (the
    positions in the sentence mean; the others get 1); ``form``: ``"none"`` (no spindle term),
    ``"code"`` or ``"paper"``.
    """
    base2 = base[:, None]
    if form == "none":
        keep = base2.expand(info.shape)
    else:
        validf = valid.to(torch.float32)
        count = validf.sum(dim=1, keepdim=True).clamp(min=1.0)
        mean = (info * validf).sum(dim=1, keepdim=True) / count
        amp2 = amp[:, None]
        if form == "code":
            keep = (base2 + amp2 * (info - mean)).clamp(0.0, SPINDLE_CODE_CLIP)
        else:
            safe_info = torch.where(valid, info, torch.ones_like(info))
            keep = (base2 - amp2 * (1.0 - mean / safe_info)).clamp(0.0, 1.0)
    return torch.where(valid, keep, torch.ones_like(keep))


def token_information(
    counts: torch.Tensor,
    form: Literal["code", "paper"] = "code",
) -> torch.Tensor:
    """Per-token information for the spindle schedule from corpus token counts.

    Args:
        counts: ``[V]`` non-negative token counts over the training corpus.
        form: ``"code"``: ``w = log(count + 1) / max log(count + 1)`` in [0, 1] (large for
            frequent tokens; 0 for tokens never seen). ``"paper"``: ``H = -log freq`` with
            add-one smoothing ``freq = (count + 1) / (sum(count) + V)``, so every H is finite and
            positive.

    Returns:
        ``[V]`` float32 tensor.
    """
    counts = torch.as_tensor(counts)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D tensor [V], got shape {tuple(counts.shape)}")
    counts = counts.to(torch.float64)
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("counts must be finite and non-negative")
    if form == "code":
        logc = torch.log1p(counts)
        top = logc.max()
        if top <= 0:
            raise ValueError("counts are all zero: token information needs a non-empty corpus")
        return (logc / top).to(torch.float32)
    if form == "paper":
        freq = (counts + 1.0) / (counts.sum() + counts.numel())
        return (-torch.log(freq)).to(torch.float32)
    raise ValueError(f"form must be 'code' or 'paper', got {form!r}")
