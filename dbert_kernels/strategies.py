"""Decoding strategies: the rule that turns one step's state into new ids.

:func:`~dbert_kernels.generate` runs a short loop; at every step it hands a strategy the current
:class:`StepState` and a function ``ask(ids, t, rows)`` that returns the denoiser's logits for the
positions in ``rows`` (``[rows.sum(), V]``, row-major), and the strategy returns the new ids. A
strategy reveals only positions in ``state.in_play`` (masked positions of the current block) and
never writes anything else.

Fixed-schedule strategies follow the time grid (one call per step, ``steps`` calls):

* :class:`PosteriorStep` (DiffusionBERT): each masked position is revealed with probability
  ``(alphabar_s - alphabar_t) / (1 - alphabar_t)`` of the sentence-level alphabar; the reveal
  decision is made first, so only revealed positions need logits.
* :class:`SpindlePosteriorStep`: a spindle schedule's per-token keep probability, evaluated at the
  information of each position's most likely allowed token (the clean token is unknown), with
  either the exact per-token posterior (``reveal="exact"``) or the rule of the authors' released
  sampler (``reveal="authors"``).
* :class:`TopKStep` (MaskGIT / LLaDA): the ``k`` most confident masked positions are revealed,
  where ``k`` brings the masked count to ``round(n_free (1 - alphabar_s))``.

Adaptive strategies reveal what the model is sure of; ``steps`` is then an upper bound on the
calls (each step reveals at least ``ceil(in_play / steps_left)`` positions so that the budget
always suffices):

* :class:`ThresholdStep` (Fast-dLLM): every position whose confidence exceeds ``threshold``,
  at least ``min_per_step`` and at most ``max_per_step`` per row.
* :class:`EntropyBoundStep` (EB-sampler): the ``k`` lowest-entropy positions such that the sum of
  their entropies minus the largest of them is at most ``gamma``.

Confidence measures (:data:`CONFIDENCE_MEASURES`), all on one scale in ``[0, 1]`` where 1 is
certain: ``"prob"`` (probability of the sampled token), ``"margin"`` (top-1 minus top-2
probability) and ``"neg_entropy"`` (reported as ``exp(-entropy)``, a monotone map of the negative
entropy, so that one threshold scale serves every measure). All come out of the fused sampling
op in the same pass over the logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from ._validation import IdsLike
from .ops import sample_absorbing, topk_unmask, unmask_decision
from .schedules import Schedule

__all__ = [
    "CONFIDENCE_MEASURES",
    "REVEAL_RULES",
    "STRATEGIES",
    "Sampling",
    "StepState",
    "Strategy",
    "PosteriorStep",
    "SpindlePosteriorStep",
    "TopKStep",
    "ThresholdStep",
    "EntropyBoundStep",
    "authors_reveal_probability",
]

CONFIDENCE_MEASURES = ("prob", "margin", "neg_entropy")
REVEAL_RULES = ("exact", "authors")
#: Strategy names accepted by :func:`~dbert_kernels.generate`.
STRATEGIES = ("posterior", "topk", "threshold", "entropy_bound")

#: ``ask(ids [B, L], t, rows [B, L] bool) -> logits [rows.sum(), V]``.
AskFn = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Sampling:
    """How a token is drawn from a position's logits (fixed for one generation)."""

    mask_id: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    banned_ids: IdsLike = None
    seed: int = 0
    backend: str = "auto"

    def draw(
        self,
        logits: torch.Tensor,
        offset: int,
        row_index: torch.Tensor,
        *,
        measure: str | None = None,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Sample every row of ``logits`` ``[R, V]``.

        Returns ``(tokens [R], score [R], entropy [R] | None)``: ``score`` is the confidence
        ``measure`` on the ``[0, 1]`` scale (None: the probability of the sampled token).
        """
        want_entropy = with_entropy or measure == "neg_entropy"
        want_margin = measure == "margin"
        extra: dict[str, bool] = {}
        if want_entropy:
            extra["return_entropy"] = True
        if want_margin:
            extra["return_margin"] = True
        out = sample_absorbing(
            logits, None, mask_id=self.mask_id, temperature=self.temperature, top_k=self.top_k,
            top_p=self.top_p, banned_ids=self.banned_ids, seed=self.seed, offset=offset,
            row_index=row_index, backend=self.backend, **extra,
        )
        tokens, prob = out[0], out[1]
        entropy = out[2] if want_entropy else None
        if measure == "margin":
            score = out[-1]
        elif measure == "neg_entropy":
            score = torch.exp(-entropy)
        else:
            score = prob
        return tokens, score, entropy


@dataclass
class StepState:
    """What a strategy sees at one step.

    Attributes:
        ids: ``[B, L]`` int64 current ids (the strategy may write into it and return it).
        in_play: ``[B, L]`` bool, the masked positions this step may reveal (current block).
        n_free: ``[B]`` int64, positions of the current block that were masked when it opened.
        t, s: this step goes from time ``t`` to ``s <= t`` on the block's time grid.
        offset: Philox counter word of this step (distinct for every step of a generation).
        steps_left: denoiser calls left in the block's budget, this one included (>= 1).
        row_index: ``[B * L]`` int64 Philox row id of each position.
    """

    ids: torch.Tensor
    in_play: torch.Tensor
    n_free: torch.Tensor
    t: float
    s: float
    offset: int
    steps_left: int
    row_index: torch.Tensor


class Strategy:
    """One reveal rule. ``adaptive``: ``steps`` is an upper bound rather than the grid."""

    adaptive = False

    def step(self, state: StepState, ask: AskFn, sampling: Sampling) -> torch.Tensor:
        """Return the new ids ``[B, L]`` after one step."""
        raise NotImplementedError


def _check_measure(confidence: str) -> str:
    if confidence not in CONFIDENCE_MEASURES:
        raise ValueError(f"confidence must be one of {CONFIDENCE_MEASURES}, got {confidence!r}")
    return confidence


def _check_reveal(reveal: str) -> str:
    if reveal not in REVEAL_RULES:
        raise ValueError(f"reveal must be one of {REVEAL_RULES}, got {reveal!r}")
    return reveal


def _draw_in_play(state: StepState, ask: AskFn, sampling: Sampling, measure: str | None, with_entropy: bool = False):
    """Sample a candidate at every in-play position: ``(candidates, score, entropy)`` all ``[B, L]``."""
    ids = state.ids
    flat = state.in_play.reshape(-1)
    logits = ask(ids, state.t, state.in_play)
    tokens, score, entropy = sampling.draw(
        logits, state.offset, state.row_index[flat], measure=measure, with_entropy=with_entropy
    )
    candidates = ids.clone()
    candidates.view(-1)[flat] = tokens
    score_full = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    score_full.view(-1)[flat] = score.to(torch.float32)
    ent_full = None
    if entropy is not None:
        ent_full = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
        ent_full.view(-1)[flat] = entropy.to(torch.float32)
    return candidates, score_full, ent_full


def _budget_minimum(state: StepState) -> torch.Tensor:
    """``[B]`` reveals needed this step so that the remaining calls can finish the block."""
    left = state.in_play.sum(dim=1)
    return torch.div(left + state.steps_left - 1, state.steps_left, rounding_mode="floor")


class PosteriorStep(Strategy):
    """The absorbing posterior on the sentence-level alphabar (DiffusionBERT's sampler)."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def step(self, state: StepState, ask: AskFn, sampling: Sampling) -> torch.Tensor:
        ids = state.ids
        prob = float(self.schedule.unmask_probability(state.s, state.t))
        reveal = unmask_decision(
            state.in_play.reshape(-1), prob, seed=sampling.seed, offset=state.offset, row_index=state.row_index
        )
        if bool(reveal.any()):
            logits = ask(ids, state.t, reveal.view_as(ids))
            tokens, _, _ = sampling.draw(logits, state.offset, state.row_index[reveal])
            ids.view(-1)[reveal] = tokens
        return ids


def authors_reveal_probability(
    keep_s: torch.Tensor, alphabar_s: float | torch.Tensor, alphabar_t: float | torch.Tensor
) -> torch.Tensor:
    """Reveal probability of the authors' released sampler, from the per-token keep ``keep_s``.

    Their step mixes a per-token forward marginal at ``s`` (``keep_s``) with the sentence-level
    transition from ``s`` to ``t`` (keep ratio ``r = alphabar_t / alphabar_s``); with the model's
    ``[MASK]`` probability taken as 0 the masked position is revealed with probability
    ``keep_s (1 - r) / (keep_s (1 - r) + 1 - keep_s)``, and with probability 1 at ``s = 0``.
    With the spindle term this is not the posterior of the per-token forward process (that is
    ``(keep_s - keep_t) / (1 - keep_t)``), so its ELBO weights do not sum to 1 per token (see
    ``python -m bench.paper.bound``). ``alphabar_s`` / ``alphabar_t``: floats or tensors that
    broadcast with ``keep_s``; float64 advised.
    """
    ab_s = torch.as_tensor(alphabar_s, dtype=keep_s.dtype, device=keep_s.device)
    ab_t = torch.as_tensor(alphabar_t, dtype=keep_s.dtype, device=keep_s.device)
    ones = torch.ones_like(keep_s * ab_s)
    tiny = torch.finfo(keep_s.dtype).tiny
    ratio = torch.where(ab_s > 0, ab_t / ab_s.clamp_min(tiny), ones)
    num = keep_s * (1.0 - ratio)
    den = num + (1.0 - keep_s)
    prob = torch.where(den > 0, num / den.clamp_min(tiny), ones)
    return torch.where(ab_s >= 1.0, ones, prob).clamp(0.0, 1.0)


class SpindlePosteriorStep(Strategy):
    """A spindle schedule's per-token reveal probability.

    The keep probability of a masked position is the spindle keep of its most likely token among
    the allowed ids (the argmax never lands on a banned id, so no position is frozen); known
    tokens keep their own information. Positions whose token (or guess) is in ``special_ids``
    stay out of the sentence mean and follow the sentence-level alphabar.

    ``reveal="exact"``: ``(keep_s - keep_t) / (1 - keep_t)``, the exact posterior of the
    per-token forward process. ``reveal="authors"``: :func:`authors_reveal_probability`.
    Either way the token is drawn from the denoiser's filtered distribution and the last step
    reveals everything.
    """

    def __init__(self, schedule: Schedule, token_info: torch.Tensor, reveal: str = "exact",
                 special_ids: IdsLike = None) -> None:
        if not schedule.is_spindle:
            raise ValueError("token_info needs a spindle schedule (spindle_lambda > 0)")
        _check_reveal(reveal)
        if not isinstance(token_info, torch.Tensor) or token_info.dim() != 1 or not token_info.is_floating_point():
            raise ValueError("token_info must be a 1-D float tensor [V] (dbert_kernels.token_information)")
        self.schedule = schedule
        self.token_info = token_info
        self.reveal = reveal
        self.special_ids = special_ids

    def probability(self, ids: torch.Tensor, guess: torch.Tensor, s: float, t: float) -> torch.Tensor:
        """Reveal probability ``[B, L]`` for ids whose masked positions would hold ``guess``."""
        info_table = self.token_info.to(device=ids.device, dtype=torch.float32)
        if s <= 0:
            return torch.ones(ids.shape, dtype=torch.float32, device=ids.device)
        special = torch.as_tensor(
            list(self.special_ids) if self.special_ids is not None else [], dtype=torch.int64
        ).to(ids.device)
        valid = ~torch.isin(guess, special)
        info = info_table[guess]
        batch = ids.shape[0]
        times = torch.tensor([t, s], dtype=torch.float64)
        keep_s = self.schedule.token_alphabar(times[1].expand(batch), info, valid)
        base_s = float(self.schedule.alphabar(times[1]))
        base_t = float(self.schedule.alphabar(times[0]))
        keep_s = torch.where(valid, keep_s, torch.full_like(keep_s, base_s))
        if self.reveal == "authors":
            return authors_reveal_probability(keep_s, base_s, base_t)
        keep_t = self.schedule.token_alphabar(times[0].expand(batch), info, valid)
        keep_t = torch.where(valid, keep_t, torch.full_like(keep_t, base_t))
        denom = 1.0 - keep_t
        prob = torch.where(denom > 0, (keep_s - keep_t) / denom.clamp(min=1e-12), torch.ones_like(denom))
        return prob.clamp(0.0, 1.0)

    def step(self, state: StepState, ask: AskFn, sampling: Sampling) -> torch.Tensor:
        ids = state.ids
        flat = state.in_play.reshape(-1)
        logits = ask(ids, state.t, state.in_play)
        vocab = logits.shape[1]
        if self.token_info.numel() != vocab:
            raise ValueError(f"token_info must be [V] = [{vocab}], got {tuple(self.token_info.shape)}")
        banned = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
        if sampling.banned_ids is not None:
            banned[torch.as_tensor(list(sampling.banned_ids), dtype=torch.int64, device=logits.device)] = True
        banned[sampling.mask_id] = True
        guess = ids.clone()
        guess.view(-1)[flat] = logits.float().masked_fill(banned, float("-inf")).argmax(dim=1)
        prob = self.probability(ids, guess, state.s, state.t).reshape(-1)[flat]
        out = sample_absorbing(
            logits, ids.view(-1)[flat], mask_id=sampling.mask_id, unmask_prob=prob,
            temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
            banned_ids=sampling.banned_ids, seed=sampling.seed, offset=state.offset,
            row_index=state.row_index[flat], backend=sampling.backend,
        )
        ids.view(-1)[flat] = out[0]
        return ids


class TopKStep(Strategy):
    """Reveal the most confident positions, as many as the schedule's masked fraction says."""

    def __init__(self, schedule: Schedule, gumbel_temperature: float = 0.0, confidence: str = "prob") -> None:
        self.schedule = schedule
        self.gumbel_temperature = gumbel_temperature
        self.confidence = _check_measure(confidence)

    def step(self, state: StepState, ask: AskFn, sampling: Sampling) -> torch.Tensor:
        ids = state.ids
        target = torch.round(state.n_free.double() * (1.0 - float(self.schedule.alphabar(state.s)))).long()
        count = (state.in_play.sum(dim=1) - target).clamp(min=0)
        live = count > 0
        if not bool(live.any()):
            return ids
        # only the rows that reveal something at this step are run (the draws are keyed on the
        # position, so the other rows' later draws do not change)
        asked = state if bool(live.all()) else replace(state, in_play=state.in_play & live[:, None])
        candidates, score, _ = _draw_in_play(asked, ask, sampling, self.confidence)
        return _reveal_top(ids, asked, candidates, score, count, sampling, self.gumbel_temperature)


def _reveal_top(ids: torch.Tensor, state: StepState, candidates: torch.Tensor, score: torch.Tensor,
                count: torch.Tensor, sampling: Sampling, gumbel_temperature: float = 0.0) -> torch.Tensor:
    """Reveal the ``count[b]`` best-scored in-play positions of each row (ties: lower position)."""
    hidden = (ids == sampling.mask_id) & ~state.in_play
    view = ids.masked_fill(hidden, 0) if bool(hidden.any()) else ids  # masks outside play: not eligible
    out = topk_unmask(view, candidates, score, count, mask_id=sampling.mask_id,
                      gumbel_temperature=gumbel_temperature, seed=sampling.seed, offset=state.offset,
                      backend=sampling.backend)
    return out.masked_fill(hidden, sampling.mask_id) if view is not ids else out


def _top_positions(score: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``[B, L]`` bool: the ``count[b]`` highest scores of each row (stable: ties to the lower position)."""
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    return rank < count[:, None]


def _check_per_step(min_per_step: int, max_per_step: int | None) -> None:
    if isinstance(min_per_step, bool) or not isinstance(min_per_step, int) or min_per_step < 1:
        raise ValueError(f"min_per_step must be an int >= 1, got {min_per_step!r}")
    if max_per_step is not None and (
        isinstance(max_per_step, bool) or not isinstance(max_per_step, int) or max_per_step < min_per_step
    ):
        raise ValueError(f"max_per_step must be None or an int >= min_per_step={min_per_step}, got {max_per_step!r}")


def _clamp_count(wanted: torch.Tensor, state: StepState, min_per_step: int, max_per_step: int | None) -> torch.Tensor:
    """Per-row reveal count: ``wanted`` within ``[min_per_step, max_per_step]``, raised to the budget."""
    count = wanted.clamp(min=min_per_step)
    if max_per_step is not None:
        count = count.clamp(max=max_per_step)
    count = torch.maximum(count, _budget_minimum(state))
    return torch.minimum(count, state.in_play.sum(dim=1))


class ThresholdStep(Strategy):
    """Fast-dLLM: reveal every in-play position whose confidence exceeds ``threshold``.

    Per row, at least ``min_per_step`` (the most confident ones when fewer pass) and at most
    ``max_per_step`` (None: no cap) positions are revealed; the step budget overrides the cap when
    the remaining calls could not finish the block otherwise.
    """

    adaptive = True

    def __init__(self, threshold: float = 0.9, min_per_step: int = 1, max_per_step: int | None = None,
                 confidence: str = "prob") -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"threshold must lie in (0, 1], got {threshold!r}")
        _check_per_step(min_per_step, max_per_step)
        self.threshold = float(threshold)
        self.min_per_step = min_per_step
        self.max_per_step = max_per_step
        self.confidence = _check_measure(confidence)

    def count(self, score: torch.Tensor, state: StepState) -> torch.Tensor:
        """Per-row reveal count for in-play confidences ``score`` ``[B, L]``."""
        above = ((score > self.threshold) & state.in_play).sum(dim=1)
        return _clamp_count(above, state, self.min_per_step, self.max_per_step)

    def step(self, state: StepState, ask: AskFn, sampling: Sampling) -> torch.Tensor:
        candidates, score, _ = _draw_in_play(state, ask, sampling, self.confidence)
        return _reveal_top(state.ids, state, candidates, score, self.count(score, state), sampling)


class EntropyBoundStep(Strategy):
    """EB-sampler: reveal the lowest-entropy positions while ``sum(H) - max(H) <= gamma``.

    In-play positions are sorted by the entropy of their filtered distribution (ties: lower
    position); the first ``k`` are revealed where ``k`` is the largest count whose entropies sum,
    minus the largest of them, to at most ``gamma`` (always >= 1), then held within
    ``[min_per_step, max_per_step]`` and raised to the step budget like :class:`ThresholdStep`.
    """

    adaptive = True

    def __init__(self, gamma: float = 0.1, min_per_step: int = 1, max_per_step: int | None = None) -> None:
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (0 < gamma < math.inf):
            raise ValueError(f"gamma (the entropy bound) must be a finite number > 0, got {gamma!r}")
        _check_per_step(min_per_step, max_per_step)
        self.gamma = float(gamma)
        self.min_per_step = min_per_step
        self.max_per_step = max_per_step

    def count(self, entropy: torch.Tensor, state: StepState) -> torch.Tensor:
        """Per-row reveal count for in-play entropies ``entropy`` ``[B, L]`` (nats)."""
        key = torch.where(state.in_play, entropy.float(), torch.full_like(entropy, math.inf, dtype=torch.float32))
        ordered = torch.sort(key, dim=1, stable=True).values
        finite = torch.where(torch.isinf(ordered), torch.zeros_like(ordered), ordered)
        total = torch.cumsum(finite, dim=1)
        before = torch.cat([torch.zeros_like(total[:, :1]), total[:, :-1]], dim=1)  # sum strictly before
        accept = (before <= self.gamma) & torch.isfinite(ordered)
        return _clamp_count(accept.sum(dim=1), state, self.min_per_step, self.max_per_step)

    def step(self, state: StepState, ask: AskFn, sampling: Sampling) -> torch.Tensor:
        candidates, _, entropy = _draw_in_play(state, ask, sampling, None, with_entropy=True)
        count = self.count(entropy, state)
        key = torch.where(state.in_play, -entropy, torch.full_like(entropy, -math.inf))
        return torch.where(_top_positions(key, count), candidates, state.ids)
