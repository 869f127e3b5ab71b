"""Training objectives of the absorbing-state diffusion (x0-parameterisation).

Both losses mask ``ids`` with :func:`dbert_kernels.spindle_mask` (the forward process, a GPU
kernel on CUDA) and score the network's x0 prediction only at masked positions, where
``CE_i = -log p_theta(x0_i | x_t)``. Per-token keep probabilities ``ab_i(t)`` come from
:meth:`dbert_kernels.Schedule.token_alphabar` (spindle or not).

* ``"d3pm"`` (discrete time, ``t ~ U{1..T}``): for the absorbing state the KL term
  ``KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))`` reduces to ``r_i CE_i`` at masked
  positions with ``r_i = (ab_i(t-1) - ab_i(t)) / (1 - ab_i(t))`` (the posterior probability of
  revealing the token); at ``t = 1`` this is the reconstruction term. Hybrid loss:
  ``sum_i r_i CE_i + hybrid_lambda * sum_i CE_i``. NELBO estimate per sentence: ``T sum_i r_i CE_i``.
* ``"mdlm"`` (continuous time, ``u = t/T ~ U(0, 1]``): weight ``w_i = -ab_i'(u) / (1 - ab_i(u))``
  (the derivative by forward-mode autodiff through the schedule), NELBO estimate
  ``sum_i w_i CE_i``; the hybrid term is added the same way.

Both training losses are normalised per non-protected token of the batch. Times are drawn
stratified over the batch from a generator keyed on (seed, offset), so a step is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from dbert_kernels import Schedule, spindle_mask

from .network import DiffusionBert
from .settings import DiffusionSettings

__all__ = ["LossOutput", "sample_times", "diffusion_loss", "posterior_weights"]

#: Smallest continuous time u = t/T drawn by the MDLM loss (the 1/u weight is finite there).
MDLM_MIN_U = 1e-4


@dataclass
class LossOutput:
    """Result of :func:`diffusion_loss`.

    Attributes:
        loss: scalar to optimise (per non-protected token).
        nelbo: ``[B]`` per-sentence NELBO estimate in nats (unbiased for the chosen loss's bound).
        ce: scalar mean cross-entropy over masked positions (nats; 0 if none).
        n_masked, n_tokens: masked and non-protected token counts.
        t: ``[B]`` times used.
    """

    loss: torch.Tensor
    nelbo: torch.Tensor
    ce: torch.Tensor
    n_masked: int
    n_tokens: int
    t: torch.Tensor


def sample_times(batch: int, settings: DiffusionSettings, generator: torch.Generator) -> torch.Tensor:
    """``[B]`` float64 times, stratified: row b falls in the b-th of B equal slices of the range.

    D3PM: integers in ``{1..T}``; MDLM: floats in ``[MDLM_MIN_U T, T)``.
    """
    u = (torch.arange(batch, dtype=torch.float64) + torch.rand(batch, generator=generator, dtype=torch.float64)) / batch
    T = float(settings.T)
    if settings.loss == "d3pm":
        return (torch.floor(u * T) + 1).clamp(1, T)
    # u < 1: at u = 1 exactly the schedule is flat (alphabar is pinned to 0), the limit weight is not
    return u.clamp(MDLM_MIN_U, 1.0 - 1e-7) * T


def posterior_weights(
    schedule: Schedule, settings: DiffusionSettings, t: torch.Tensor, info: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Per-token NELBO weights ``[B, L]`` (float32): ``T r_i`` for D3PM, ``w_i`` for MDLM."""
    t = t.to(torch.float64)
    if settings.loss == "d3pm":
        ab_t = schedule.token_alphabar(t, info, valid)
        ab_s = schedule.token_alphabar(t - 1, info, valid)
        r = (ab_s - ab_t) / (1.0 - ab_t).clamp_min(1e-12)
        return r.clamp(0.0, 1.0) * float(settings.T)
    with fwAD.dual_level():
        dual = fwAD.make_dual(t, torch.full_like(t, float(settings.T)))  # d/du with t = u T
        primal, tangent = fwAD.unpack_dual(schedule.token_alphabar(dual, info, valid))
    if tangent is None:  # alphabar does not depend on t (cannot happen for the built-in schedules)
        tangent = torch.zeros_like(primal)
    return (-tangent / (1.0 - primal).clamp_min(1e-12)).clamp_min(0.0)


def diffusion_loss(
    model: DiffusionBert,
    ids: torch.Tensor,
    *,
    settings: DiffusionSettings,
    token_info: torch.Tensor | None,
    seed: int = 0,
    offset: int = 0,
    t: torch.Tensor | None = None,
    backend: str = "auto",
    shard: slice | None = None,
) -> LossOutput:
    """The configured loss on a batch of clean ids ``[B, L]`` (``[CLS] x [SEP] [PAD]...``).

    ``[CLS]`` is protected (never masked); ``[SEP]`` and ``[PAD]`` are tokens like any other, so
    the model learns where sentences end. ``token_info``: ``[V]`` token information (required by
    the spindle schedule). ``t``: ``[B]`` times (default: :func:`sample_times` keyed on seed and offset).

    ``shard``: score only these rows of the batch (data-parallel training: each process passes
    the whole global batch and its own rows). Times and masks are drawn for the whole batch and
    the loss keeps the whole batch's normaliser, so the shards' losses sum to the whole batch's
    loss; ``nelbo`` and ``t`` are the shard's rows.
    """
    schedule = settings.build_schedule()
    batch = ids.shape[0]
    cls_id = settings.special_ids["cls"]
    if t is None:
        gen = torch.Generator().manual_seed((seed * 1_000_003 + offset) % (2**63))
        t = sample_times(batch, settings, gen)
    t = t.to(torch.float64)
    info_v = token_info.to(ids.device) if token_info is not None else None
    noised, masked = spindle_mask(
        ids, t, schedule, info_v if schedule.is_spindle else None, mask_id=settings.special_ids["mask"],
        protected_ids=[cls_id], vocab_size=settings.vocab_size, seed=seed, offset=offset, backend=backend,
    )
    valid = ids != cls_id
    n_tokens = int(valid.sum())
    if shard is not None:
        ids, noised, masked, valid, t = ids[shard], noised[shard], masked[shard], valid[shard], t[shard]
        batch = ids.shape[0]
    info = info_v[ids] if info_v is not None else torch.zeros(ids.shape, device=ids.device)
    weights = posterior_weights(schedule, settings, t.to(ids.device), info, valid)
    logits = model(noised, t=t.to(device=ids.device, dtype=torch.float32), rows=masked)
    ce = F.cross_entropy(logits.float(), ids[masked], reduction="none")
    row = masked.nonzero()[:, 0]
    nelbo = torch.zeros(batch, device=ids.device).index_add(0, row, weights[masked].to(ce.dtype) * ce)
    vb = nelbo.sum() / (float(settings.T) if settings.loss == "d3pm" else 1.0)
    loss = (vb + settings.hybrid_lambda * ce.sum()) / max(n_tokens, 1)
    return LossOutput(
        loss=loss, nelbo=nelbo.detach(), ce=ce.detach().mean() if ce.numel() else ce.new_zeros(()),
        n_masked=int(masked.sum()), n_tokens=n_tokens, t=t,
    )
