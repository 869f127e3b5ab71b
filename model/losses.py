"""Training objectives of the absorbing-state diffusion (x0-parameterisation).

Which positions are noised, and with which keep probability ``ab_i(t)`` (one rule,
:func:`keep_probabilities`, shared by the forward process, the losses and the evaluation):

* real tokens (every id but ``[CLS]``, ``[SEP]`` and ``[PAD]``): the schedule's per-token keep
  probability (:meth:`dbert_kernels.Schedule.token_alphabar`); the spindle term's sentence mean is
  taken over the real tokens only, as in the authors' code, so a sentence's padding does not move
  its tokens' schedule;
* ``[SEP]`` and ``[PAD]``: the sentence-level keep probability ``alphabar(t)`` of the base
  schedule (no spindle term), so the model learns where sentences end (the authors' code
  noises its padding with the same probability but leaves it out of the loss);
* ``[CLS]``: never masked.

The forward process is :func:`dbert_kernels.spindle_mask` (a GPU kernel on CUDA). The network's
x0 prediction is scored at masked positions, ``CE_i = -log p_theta(x0_i | x_t)``.

* ``"d3pm"`` (discrete time, ``t ~ U{1..T}``): for the absorbing state the KL term
  ``KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t))`` reduces to ``r_i CE_i`` at masked
  positions with ``r_i = (ab_i(t-1) - ab_i(t)) / (1 - ab_i(t))`` (the exact posterior probability
  of revealing the token); at ``t = 1`` this is the reconstruction term. Hybrid loss:
  ``sum_i r_i CE_i + hybrid_lambda * sum_{i in CE set} CE_i``. NELBO estimate per sentence:
  ``T sum_i r_i CE_i``.
* ``"mdlm"`` (continuous time, ``u = t/T ~ U(0, 1]``): weight ``w_i = -ab_i'(u) / (1 - ab_i(u))``
  (the derivative by forward-mode autodiff through the schedule), NELBO estimate
  ``sum_i w_i CE_i``; the hybrid term is added the same way.

The hybrid term's CE set (``DiffusionSettings.hybrid_ce``): ``"masked"`` (default: the auxiliary
term then sharpens exactly the predictions the bound scores) or ``"all"`` (the authors' code:
every non-pad position, masked or not). The normalisation (``DiffusionSettings.loss_norm``):
``"token"`` (default: per noisable token of the batch, so the gradient scale does not depend on
sentence length) or ``"sentence"`` (the authors': the batch sum over sentences divided by the
batch size). Times are drawn stratified over the batch from a generator keyed on
(seed, offset), so a step is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from dbert_kernels import Schedule, authors_reveal_probability, spindle_mask

from .network import DiffusionBert
from .settings import DiffusionSettings

__all__ = [
    "LossOutput", "sample_times", "diffusion_loss", "posterior_weights", "keep_probabilities",
    "token_classes", "forward_mask", "authors_reveal_probability",
]

#: Smallest continuous time u = t/T drawn by the MDLM loss (the 1/u weight is finite there).
MDLM_MIN_U = 1e-4


@dataclass
class LossOutput:
    """Result of :func:`diffusion_loss`.

    Attributes:
        loss: scalar to optimise (normalised as ``settings.loss_norm`` says).
        nelbo: ``[B]`` per-sentence NELBO estimate in nats over every noisable position (real
            tokens, ``[SEP]`` and ``[PAD]``: a bound on the padded sequence, length included).
        nelbo_real: ``[B]`` the same estimate restricted to the real tokens (the part the
            authors' code reports).
        ce: scalar mean cross-entropy over masked positions (nats; 0 if none).
        n_masked, n_tokens: masked and noisable (not ``[CLS]``) position counts.
        n_real: real-token count (not ``[CLS]``, ``[SEP]``, ``[PAD]``).
        t: ``[B]`` times used.
    """

    loss: torch.Tensor
    nelbo: torch.Tensor
    nelbo_real: torch.Tensor
    ce: torch.Tensor
    n_masked: int
    n_tokens: int
    n_real: int
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


def token_classes(ids: torch.Tensor, settings: DiffusionSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """``(real, noisable)``, both ``[B, L]`` bool, for clean ids ``[B, L]``.

    ``real``: not ``[CLS]``, ``[SEP]`` or ``[PAD]`` (the positions of the spindle sentence mean
    and of the per-wordpiece metrics); ``noisable``: not ``[CLS]``.
    """
    sp = settings.special_ids
    if "cls" not in sp:
        raise ValueError("settings.special_ids lacks 'cls': build the settings from the tokenizer (special_ids(tok))")
    noisable = ids != sp["cls"]
    real = noisable.clone()
    for name in ("sep", "pad"):
        if name in sp:
            real &= ids != sp[name]
    return real, noisable


def keep_probabilities(
    schedule: Schedule, t: torch.Tensor, info: torch.Tensor, real: torch.Tensor, noisable: torch.Tensor
) -> torch.Tensor:
    """Keep probabilities ``ab_i(t)`` ``[B, L]`` (float32) of the forward process.

    Real tokens: ``schedule.token_alphabar`` with the sentence mean over ``real``; other noisable
    positions (``[SEP]``, ``[PAD]``): the base ``schedule.alphabar(t)``; the rest (``[CLS]``): 1.
    ``t``: ``[B]`` times (may carry a forward-mode tangent); ``info``: ``[B, L]`` token information
    per position (zeros when the schedule has no spindle term).
    """
    token = schedule.token_alphabar(t, info, real)
    base = schedule.alphabar(t).to(token.dtype)[:, None].expand_as(token)
    return torch.where(real, token, torch.where(noisable, base, torch.ones_like(token)))


def posterior_weights(
    schedule: Schedule,
    settings: DiffusionSettings,
    t: torch.Tensor,
    info: torch.Tensor,
    valid: torch.Tensor,
    noisable: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token NELBO weights ``[B, L]`` (float32): ``T r_i`` for D3PM, ``w_i`` for MDLM.

    ``valid``: the real tokens (spindle mean); ``noisable``: every position that can be masked
    (default ``valid``); see :func:`keep_probabilities`.
    """
    noisable = valid if noisable is None else noisable
    t = t.to(torch.float64)
    if settings.loss == "d3pm":
        ab_t = keep_probabilities(schedule, t, info, valid, noisable)
        ab_s = keep_probabilities(schedule, t - 1, info, valid, noisable)
        r = (ab_s - ab_t) / (1.0 - ab_t).clamp_min(1e-12)
        return r.clamp(0.0, 1.0) * float(settings.T)
    with fwAD.dual_level():
        dual = fwAD.make_dual(t, torch.full_like(t, float(settings.T)))  # d/du with t = u T
        primal, tangent = fwAD.unpack_dual(keep_probabilities(schedule, dual, info, valid, noisable))
    if tangent is None:  # alphabar does not depend on t (cannot happen for the built-in schedules)
        tangent = torch.zeros_like(primal)
    return (-tangent / (1.0 - primal).clamp_min(1e-12)).clamp_min(0.0)


def forward_mask(
    ids: torch.Tensor,
    t: torch.Tensor,
    settings: DiffusionSettings,
    token_info: torch.Tensor | None,
    *,
    seed: int = 0,
    offset: int = 0,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward process at times ``t`` ``[B]``: ``(noised ids, masked)``, both ``[B, L]``.

    Each position is masked independently with probability ``1 - ab_i(t)`` of
    :func:`keep_probabilities`: the real tokens by :func:`dbert_kernels.spindle_mask` with
    ``[CLS]``, ``[SEP]`` and ``[PAD]`` protected (so they stay out of the spindle sentence mean),
    ``[SEP]``/``[PAD]`` by the same op on the base schedule. Both calls share (seed, offset), so
    each position reads one Philox uniform: the two masks cover disjoint positions and stay
    independent Bernoulli draws.
    """
    schedule = settings.build_schedule()
    sp = settings.special_ids
    mask_id = sp["mask"]
    common = dict(mask_id=mask_id, vocab_size=settings.vocab_size, seed=seed, offset=offset, backend=backend)
    if not schedule.is_spindle:
        return spindle_mask(ids, t, schedule, None, protected_ids=[sp["cls"]], **common)
    specials = [sp[name] for name in ("cls", "sep", "pad") if name in sp]
    _, masked = spindle_mask(ids, t, schedule, token_info, protected_ids=specials, **common)
    base = Schedule(T=schedule.T, base=schedule.base)
    _, masked_base = spindle_mask(ids, t, base, None, protected_ids=[sp["cls"]], **common)
    real, _ = token_classes(ids, settings)
    masked = masked | (masked_base & ~real)
    return torch.where(masked, torch.full_like(ids, mask_id), ids), masked


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

    ``[CLS]`` is never masked; real tokens, ``[SEP]`` and ``[PAD]`` are noised as
    :func:`keep_probabilities` says. ``token_info``: ``[V]`` token information (required by the
    spindle schedule). ``t``: ``[B]`` times (default: :func:`sample_times` keyed on seed and offset).

    ``shard``: score only these rows of the batch (data-parallel training: each process passes
    the whole global batch and its own rows). Times and masks are drawn for the whole batch and
    the loss keeps the whole batch's normaliser, so the shards' losses sum to the whole batch's
    loss; ``nelbo`` and ``t`` are the shard's rows.
    """
    schedule = settings.build_schedule()
    batch = ids.shape[0]
    if schedule.is_spindle and token_info is None:
        raise ValueError(
            "a spindle schedule needs token_info: pass token_information(counts, form) computed "
            "from the training corpus's token counts"
        )
    if t is None:
        gen = torch.Generator().manual_seed((seed * 1_000_003 + offset) % (2**63))
        t = sample_times(batch, settings, gen)
    t = t.to(torch.float64)
    info_v = token_info.to(ids.device) if token_info is not None and schedule.is_spindle else None
    noised, masked = forward_mask(ids, t, settings, info_v, seed=seed, offset=offset, backend=backend)
    real, noisable = token_classes(ids, settings)
    n_tokens = int(noisable.sum())
    n_sentences = batch
    if shard is not None:
        ids, noised, masked, t = ids[shard], noised[shard], masked[shard], t[shard]
        real, noisable = real[shard], noisable[shard]
        batch = ids.shape[0]
    info = info_v[ids] if info_v is not None else torch.zeros(ids.shape, device=ids.device)
    weights = posterior_weights(schedule, settings, t.to(ids.device), info, real, noisable)
    rows = masked
    if settings.hybrid_ce == "all":  # the authors' set: every real token, masked or not
        rows = masked | real
    logits = model(noised, t=t.to(device=ids.device, dtype=torch.float32), rows=rows)
    ce_rows = F.cross_entropy(logits.float(), ids[rows], reduction="none")
    in_kl = masked[rows]
    ce = ce_rows[in_kl]
    row = masked.nonzero()[:, 0]
    term = weights[masked].to(ce.dtype) * ce
    nelbo = torch.zeros(batch, device=ids.device).index_add(0, row, term)
    nelbo_real = torch.zeros(batch, device=ids.device).index_add(0, row, term * real[masked].to(ce.dtype))
    vb = nelbo.sum() / (float(settings.T) if settings.loss == "d3pm" else 1.0)
    denom = max(n_tokens, 1) if settings.loss_norm == "token" else n_sentences
    loss = (vb + settings.hybrid_lambda * ce_rows.sum()) / denom
    return LossOutput(
        loss=loss, nelbo=nelbo.detach(), nelbo_real=nelbo_real.detach(),
        ce=ce.detach().mean() if ce.numel() else ce.new_zeros(()),
        n_masked=int(masked.sum()), n_tokens=n_tokens, n_real=int(real.sum()), t=t,
    )
