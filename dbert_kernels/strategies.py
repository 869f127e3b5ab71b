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
  where ``k`` brings the masked count to ``round(n_free (1 - alphabar_s))`` (``counts="schedule"``)
  or is LLaDA's even split of the block's masks over its steps, the remainder one each to the
  first steps (``counts="even"``).

Adaptive strategies reveal what the model is sure of; ``steps`` is then an upper bound on the
calls (each step reveals at least ``ceil(in_play / steps_left)`` positions so that the budget
always suffices):

* :class:`ThresholdStep` (Fast-dLLM): every position whose confidence is at least
  ``threshold``, at least ``min_per_step`` and at most ``max_per_step`` per row.
* :class:`FactorStep` (Fast-dLLM's ``factor`` rule): the ``n`` most confident positions, where
  the ``i``-th most confident must reach the dynamic threshold ``1 - factor / (i + 1)``.
* :class:`EntropyBoundStep` (EB-sampler): positions sorted by an error proxy (``order``: entropy,
  confidence or margin); the first ``k`` are revealed where ``k`` is the longest prefix whose
  entropies sum, minus the largest of them, to at most ``gamma``.

Confidence measures (:data:`CONFIDENCE_MEASURES`), all on one scale in ``[0, 1]`` where 1 is
certain: ``"prob"`` (probability of the sampled token), ``"margin"`` (top-1 minus top-2
probability), ``"neg_entropy"`` (reported as ``exp(-entropy)``, a monotone map of the negative
entropy, so that one threshold scale serves every measure) and, for ``topk`` only, ``"random"``
(a uniformly random order: LLaDA's ``remasking="random"``).

Where the scores come from (:data:`SCORE_SOURCES`): ``scores="filtered"`` measures the
distribution the token is drawn from (after temperature, top-k, top-p and banned ids), out of the
fused sampling op in the same pass over the logits; ``scores="raw"`` measures the plain softmax of
the raw logits in float64, as LLaDA, Fast-dLLM and the EB-sampler do (one more pass).

Every strategy is registered by name (:data:`STRATEGIES`, :func:`register_strategy`) with the
hyper-parameters it takes; :data:`OPTIONS` is the one home of each hyper-parameter's default. The
presets ``"llada"``, ``"fast-dllm"``, ``"fast-dllm-factor"`` and ``"eb-sampler"`` are those
strategies with the peers' settings (raw scores, LLaDA's count split): with greedy decoding they
make the peers' decisions (docs/decoding.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from ._validation import IdsLike
from .ops import sample_absorbing, topk_unmask, unmask_decision
from .schedules import Schedule

__all__ = [
    "CONFIDENCE_MEASURES",
    "COUNT_RULES",
    "DEFAULT_STRATEGY",
    "EB_ORDERS",
    "OPTIONS",
    "Option",
    "REVEAL_RULES",
    "SCORE_SOURCES",
    "STRATEGIES",
    "Sampling",
    "StepState",
    "Strategy",
    "StrategySpec",
    "PosteriorStep",
    "SpindlePosteriorStep",
    "TopKStep",
    "ThresholdStep",
    "FactorStep",
    "EntropyBoundStep",
    "authors_reveal_probability",
    "make_strategy",
    "register_strategy",
]

CONFIDENCE_MEASURES = ("prob", "margin", "neg_entropy", "random")
REVEAL_RULES = ("exact", "authors")
SCORE_SOURCES = ("filtered", "raw")
#: The strategy :func:`~dbert_kernels.generate` and ``dbert generate`` use unless told otherwise.
DEFAULT_STRATEGY = "posterior"
COUNT_RULES = ("schedule", "even")
EB_ORDERS = ("entropy", "confidence", "margin")


@dataclass(frozen=True)
class Option:
    """A strategy hyper-parameter: its default (written here only), its type and choices, and its
    help line (the CLI's flags are built from these). ``cli=False``: not a command-line flag."""

    default: Any
    type: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None
    cli: bool = True


#: Every strategy hyper-parameter, by keyword name: the one home of its default.
OPTIONS: dict[str, Option] = {
    "confidence": Option("prob", str, "confidence measure of topk / threshold / factor", CONFIDENCE_MEASURES),
    "scores": Option("filtered", str, "scores of the sampling distribution (filtered) or the plain float64 softmax "
                     "of the raw logits (raw, as LLaDA / Fast-dLLM / EB-sampler)", SCORE_SOURCES),
    "counts": Option("schedule", str, "topk: reveals per step from the schedule, or LLaDA's even split", COUNT_RULES),
    "gumbel_temperature": Option(0.0, float, "topk: Gumbel noise on the confidence"),
    "threshold": Option(0.9, float, "threshold: reveal confidences at least this, in (0, 1]"),
    "factor": Option(1.0, float, "factor: the i-th most confident must reach 1 - factor / (i + 1)"),
    "gamma": Option(0.1, float, "entropy_bound: the entropy bound (nats)"),
    "order": Option("entropy", str, "entropy_bound: the error proxy that orders positions", EB_ORDERS),
    "min_per_step": Option(1, int, "threshold / entropy_bound: reveals per row and step, at least"),
    "max_per_step": Option(None, int, "threshold / entropy_bound: reveals per row and step, at most"),
    "reveal": Option("exact", str, "spindle posterior: the exact per-token posterior or the authors' rule",
                     REVEAL_RULES),
    "special_ids": Option(None, list, "spindle posterior: ids kept out of the sentence mean (default: the banned "
                          "ids)", cli=False),
}

#: ``ask(ids [B, L], t, rows [B, L] bool) -> logits [rows.sum(), V]``.
AskFn = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Sampling:
    """How a token is drawn from a position's logits (fixed for one generation).

    ``temperature``, ``top_k``, ``top_p``, ``banned_ids``, ``seed`` and ``backend`` as in
    :func:`~dbert_kernels.sample_absorbing`; ``mask_id`` is filled in by
    :func:`~dbert_kernels.generate` (it is always banned).
    """

    mask_id: int | None = None
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
        budget: the block's share of the steps (this step is number ``budget - steps_left``).
    """

    ids: torch.Tensor
    in_play: torch.Tensor
    n_free: torch.Tensor
    t: float
    s: float
    offset: int
    steps_left: int
    row_index: torch.Tensor
    budget: int = 0


class Strategy:
    """One reveal rule. ``adaptive``: ``steps`` is an upper bound rather than the grid."""

    adaptive = False

    def step(self, state: StepState, ask: AskFn, sampling: Sampling) -> torch.Tensor:
        """Return the new ids ``[B, L]`` after one step."""
        raise NotImplementedError


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_measure(confidence: str) -> str:
    return _choice(confidence, "confidence", CONFIDENCE_MEASURES)


def _check_reveal(reveal: str) -> str:
    return _choice(reveal, "reveal", REVEAL_RULES)


def raw_scores(logits: torch.Tensor, tokens: torch.Tensor, measure: str | None,
               with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(score [R], entropy [R] | None)`` of ``tokens`` under the plain softmax of the raw
    ``logits`` ``[R, V]`` in float64 (LLaDA's and Fast-dLLM's confidence): ``measure`` ``"prob"``
    (or None): ``p[token]``; ``"margin"``: top-1 minus top-2 probability; ``"neg_entropy"``:
    ``exp(-entropy)``. Entropy in nats."""
    logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    p = logp.exp()
    entropy = None
    if with_entropy or measure == "neg_entropy":
        entropy = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(dim=-1)
    if measure == "margin":
        top = p.topk(min(2, p.shape[-1]), dim=-1).values
        score = top[:, 0] - (top[:, 1] if top.shape[1] > 1 else 0.0)
    elif measure == "neg_entropy":
        score = torch.exp(-entropy)
    else:
        score = p.gather(1, tokens.long()[:, None])[:, 0]
    return score, entropy


def _draw_in_play(state: StepState, ask: AskFn, sampling: Sampling, measure: str | None, with_entropy: bool = False,
                  scores: str = "filtered"):
    """Sample a candidate at every in-play position: ``(candidates, score, entropy)`` all ``[B, L]``
    (float32 scores from the filtered distribution, float64 from the raw logits)."""
    ids = state.ids
    flat = state.in_play.reshape(-1)
    logits = ask(ids, state.t, state.in_play)
    if measure == "random":
        tokens, _, _ = sampling.draw(logits, state.offset, state.row_index[flat])
        score, entropy = torch.ones_like(tokens, dtype=torch.float32), None
    elif scores == "raw":
        tokens, _, _ = sampling.draw(logits, state.offset, state.row_index[flat])
        score, entropy = raw_scores(logits, tokens, measure, with_entropy)
    else:
        tokens, score, entropy = sampling.draw(
            logits, state.offset, state.row_index[flat], measure=measure, with_entropy=with_entropy
        )
        score, entropy = score.to(torch.float32), None if entropy is None else entropy.to(torch.float32)
    candidates = ids.clone()
    candidates.view(-1)[flat] = tokens
    score_full = torch.zeros(ids.shape, dtype=score.dtype, device=ids.device)
    score_full.view(-1)[flat] = score
    ent_full = None
    if entropy is not None:
        ent_full = torch.zeros(ids.shape, dtype=entropy.dtype, device=ids.device)
        ent_full.view(-1)[flat] = entropy
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
    """Reveal the most confident positions: as many as the schedule's masked fraction says
    (``counts="schedule"``), or LLaDA's split of the block's masks over its steps, ``n // steps``
    each and one more in the first ``n % steps`` steps (``counts="even"``).

    ``confidence="random"`` reveals a uniformly random subset of that size (LLaDA's random
    remasking); ``gumbel_temperature`` adds Gumbel noise to the log-confidence.
    """

    def __init__(self, schedule: Schedule, gumbel_temperature: float = OPTIONS["gumbel_temperature"].default,
                 confidence: str = OPTIONS["confidence"].default, scores: str = OPTIONS["scores"].default,
                 counts: str = OPTIONS["counts"].default) -> None:
        if isinstance(gumbel_temperature, bool) or not isinstance(gumbel_temperature, (int, float)) or not (
                0 <= gumbel_temperature < math.inf):
            raise ValueError(f"gumbel_temperature must be a finite number >= 0, got {gumbel_temperature!r}")
        self.schedule = schedule
        self.confidence = _check_measure(confidence)
        if self.confidence == "random" and gumbel_temperature:
            raise ValueError("confidence='random' is already a random order: leave gumbel_temperature at 0")
        self.gumbel_temperature = float(gumbel_temperature)
        self.scores = _choice(scores, "scores", SCORE_SOURCES)
        self.counts = _choice(counts, "counts", COUNT_RULES)

    def count(self, state: StepState) -> torch.Tensor:
        """Per-row reveal count ``[B]`` at this step."""
        left = state.in_play.sum(dim=1)
        if self.counts == "even":
            budget = max(state.budget, state.steps_left)
            k = budget - state.steps_left
            wanted = torch.div(state.n_free, budget, rounding_mode="floor") + (k < state.n_free % budget).long()
            return torch.minimum(wanted, left)
        target = torch.round(state.n_free.double() * (1.0 - float(self.schedule.alphabar(state.s)))).long()
        return (left - target).clamp(min=0)

    def step(self, state: StepState, ask: AskFn, sampling: Sampling) -> torch.Tensor:
        ids = state.ids
        count = self.count(state)
        live = count > 0
        if not bool(live.any()):
            return ids
        # only the rows that reveal something at this step are run (the draws are keyed on the
        # position, so the other rows' later draws do not change)
        asked = state if bool(live.all()) else replace(state, in_play=state.in_play & live[:, None])
        candidates, score, _ = _draw_in_play(asked, ask, sampling, self.confidence, scores=self.scores)
        noise = 1.0 if self.confidence == "random" else self.gumbel_temperature
        return _reveal_top(ids, asked, candidates, score, count, sampling, noise)


def _reveal_top(ids: torch.Tensor, state: StepState, candidates: torch.Tensor, score: torch.Tensor,
                count: torch.Tensor, sampling: Sampling, gumbel_temperature: float = 0.0) -> torch.Tensor:
    """Reveal the ``count[b]`` best-scored in-play positions of each row (ties: lower position).

    float32 scores go through the fused ``topk_unmask`` op; float64 scores (the raw-logit
    confidences) are ranked in float64, so that no two of them tie by rounding."""
    if score.dtype == torch.float64 and not gumbel_temperature:
        key = torch.where(state.in_play, score, torch.full_like(score, -math.inf))
        return torch.where(_top_positions(key, count) & state.in_play, candidates, ids)
    hidden = (ids == sampling.mask_id) & ~state.in_play
    view = ids.masked_fill(hidden, 0) if bool(hidden.any()) else ids  # masks outside play: not eligible
    out = topk_unmask(view, candidates, score.to(torch.float32), count, mask_id=sampling.mask_id,
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
    """Fast-dLLM: reveal every in-play position whose confidence is at least ``threshold``.

    Per row, at least ``min_per_step`` (the most confident ones when fewer pass) and at most
    ``max_per_step`` (None: no cap) positions are revealed; the step budget overrides the cap when
    the remaining calls could not finish the block otherwise.
    """

    adaptive = True

    def __init__(self, threshold: float = OPTIONS["threshold"].default,
                 min_per_step: int = OPTIONS["min_per_step"].default,
                 max_per_step: int | None = OPTIONS["max_per_step"].default,
                 confidence: str = OPTIONS["confidence"].default, scores: str = OPTIONS["scores"].default) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"threshold must lie in (0, 1], got {threshold!r}")
        _check_per_step(min_per_step, max_per_step)
        self.threshold = float(threshold)
        self.min_per_step = min_per_step
        self.max_per_step = max_per_step
        self.confidence = _check_measure(confidence)
        if self.confidence == "random":
            raise ValueError("confidence='random' applies to strategy 'topk' only (a threshold needs a confidence)")
        self.scores = _choice(scores, "scores", SCORE_SOURCES)

    def count(self, score: torch.Tensor, state: StepState) -> torch.Tensor:
        """Per-row reveal count for in-play confidences ``score`` ``[B, L]``."""
        above = ((score >= self.threshold) & state.in_play).sum(dim=1)
        return _clamp_count(above, state, self.min_per_step, self.max_per_step)

    def step(self, state: StepState, ask: AskFn, sampling: Sampling) -> torch.Tensor:
        candidates, score, _ = _draw_in_play(state, ask, sampling, self.confidence, scores=self.scores)
        return _reveal_top(state.ids, state, candidates, score, self.count(score, state), sampling)


class FactorStep(Strategy):
    """Fast-dLLM's ``factor`` rule: with the in-play confidences sorted high to low, reveal the
    first ``n`` where ``n`` is the first (0-based) index whose confidence is below
    ``1 - factor / (n + 2)``; at least one, and all of them when that index is the last one or
    none is below (Fast-dLLM's ``get_transfer_index_dynamic``). The step budget raises the count
    when the remaining calls could not finish the block otherwise.
    """

    adaptive = True

    def __init__(self, factor: float = OPTIONS["factor"].default, confidence: str = OPTIONS["confidence"].default,
                 scores: str = OPTIONS["scores"].default) -> None:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (0 < factor < math.inf):
            raise ValueError(f"factor must be a finite number > 0, got {factor!r}")
        self.factor = float(factor)
        self.confidence = _check_measure(confidence)
        if self.confidence == "random":
            raise ValueError("confidence='random' applies to strategy 'topk' only (the factor rule needs a confidence)")
        self.scores = _choice(scores, "scores", SCORE_SOURCES)

    def count(self, score: torch.Tensor, state: StepState) -> torch.Tensor:
        """Per-row reveal count for in-play confidences ``score`` ``[B, L]``."""
        key = torch.where(state.in_play, score.double(), torch.full_like(score, -math.inf, dtype=torch.float64))
        ordered = torch.sort(key, dim=1, descending=True).values
        n = state.in_play.sum(dim=1)
        index = torch.arange(ordered.shape[1], device=ordered.device)
        bar = torch.tensor([1.0 - self.factor / (i + 2) for i in range(ordered.shape[1])], dtype=torch.float64,
                           device=ordered.device)
        bar[0] = -1.0  # the first always passes
        below = (ordered < bar) & (index < n[:, None])
        first = torch.where(below, index, torch.full_like(index, ordered.shape[1])).min(dim=1).values
        first = torch.minimum(first, (n - 1).clamp(min=0))  # no break: the loop ends on the last index
        count = torch.where((first == 0) | (first == n - 1), first + 1, first)
        return torch.minimum(torch.maximum(count, _budget_minimum(state)), n)

    def step(self, state: StepState, ask: AskFn, sampling: Sampling) -> torch.Tensor:
        candidates, score, _ = _draw_in_play(state, ask, sampling, self.confidence, scores=self.scores)
        return _reveal_top(state.ids, state, candidates, score, self.count(score, state), sampling)


class EntropyBoundStep(Strategy):
    """EB-sampler: reveal positions in order of an error proxy while ``sum(H) - max(H) <= gamma``.

    In-play positions are sorted by ``order``: lowest entropy first (``"entropy"``), highest
    confidence first (``"confidence"``) or highest margin first (``"margin"``), ties to the lower
    position; the first ``k`` are revealed where ``k`` is the largest count whose entropies sum,
    minus the largest of them, to at most ``gamma`` (always >= 1), then held within
    ``[min_per_step, max_per_step]`` and raised to the step budget like :class:`ThresholdStep`.
    """

    adaptive = True

    def __init__(self, gamma: float = OPTIONS["gamma"].default, min_per_step: int = OPTIONS["min_per_step"].default,
                 max_per_step: int | None = OPTIONS["max_per_step"].default, order: str = OPTIONS["order"].default,
                 scores: str = OPTIONS["scores"].default) -> None:
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (0 < gamma < math.inf):
            raise ValueError(f"gamma (the entropy bound) must be a finite number > 0, got {gamma!r}")
        _check_per_step(min_per_step, max_per_step)
        self.gamma = float(gamma)
        self.min_per_step = min_per_step
        self.max_per_step = max_per_step
        self.order = _choice(order, "order", EB_ORDERS)
        self.scores = _choice(scores, "scores", SCORE_SOURCES)

    def _key(self, entropy: torch.Tensor, proxy: torch.Tensor | None, state: StepState) -> torch.Tensor:
        """``[B, L]`` sort key, highest first; ``-inf`` outside play."""
        key = -entropy if proxy is None else proxy.to(entropy.dtype)
        return torch.where(state.in_play, key, torch.full_like(key, -math.inf))

    def count(self, entropy: torch.Tensor, state: StepState, proxy: torch.Tensor | None = None) -> torch.Tensor:
        """Per-row reveal count for in-play entropies ``entropy`` ``[B, L]`` (nats), ordered by
        ``proxy`` (highest first; None: lowest entropy first)."""
        order = torch.sort(self._key(entropy, proxy, state), dim=1, descending=True, stable=True).indices
        ent = torch.where(state.in_play, entropy, torch.zeros_like(entropy)).gather(1, order)
        play = state.in_play.gather(1, order)
        total = torch.cumsum(ent, dim=1)
        largest = torch.cummax(ent, dim=1).values
        accept = (total - largest <= self.gamma) & play
        return _clamp_count(accept.sum(dim=1), state, self.min_per_step, self.max_per_step)

    def step(self, state: StepState, ask: AskFn, sampling: Sampling) -> torch.Tensor:
        measure = {"entropy": None, "confidence": "prob", "margin": "margin"}[self.order]
        candidates, score, entropy = _draw_in_play(state, ask, sampling, measure, with_entropy=True,
                                                   scores=self.scores)
        proxy = None if measure is None else score
        count = self.count(entropy, state, proxy)
        return torch.where(_top_positions(self._key(entropy, proxy, state), count), candidates, state.ids)


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy: ``build(schedule, token_info, **options)`` returns the
    :class:`Strategy`; ``options``: the :data:`OPTIONS` names it takes; ``token_info``: whether it
    uses a spindle schedule's token information (others are refused one)."""

    name: str
    build: Callable[..., Strategy]
    options: tuple[str, ...]
    help: str
    token_info: bool = False


#: Registered strategies by name (:func:`register_strategy`); what ``generate(strategy=...)`` and
#: ``dbert generate --strategy`` accept.
STRATEGIES: dict[str, StrategySpec] = {}


def register_strategy(name: str, build: Callable[..., Strategy], *, options: tuple[str, ...] = (),
                      help: str = "", token_info: bool = False) -> None:
    """Register a strategy under ``name``.

    ``build(schedule, token_info, **options)`` returns a :class:`Strategy` (``schedule``: the
    generation's :class:`~dbert_kernels.Schedule`; ``token_info``: its spindle token information
    or None); ``options``: the names of the :data:`OPTIONS` it takes, which are passed only when
    the caller sets them. Options of your own: add them to :data:`OPTIONS` first. ``token_info``:
    the strategy uses the token information (``generate(token_info=...)`` is refused otherwise).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a strategy name must be a non-empty string, got {name!r}")
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise ValueError(f"strategy {name!r}: unknown options {unknown}; add them to dbert_kernels.strategies.OPTIONS")
    STRATEGIES[name] = StrategySpec(name, build, tuple(options), help, token_info)


def make_strategy(strategy: str | Strategy, schedule: Schedule | None = None, *,
                  token_info: torch.Tensor | None = None, **options: Any) -> Strategy:
    """The :class:`Strategy` registered as ``strategy``, built with the given hyper-parameters
    (:data:`OPTIONS`); a :class:`Strategy` object is returned as it is. An option that the
    strategy does not take is refused (it would be ignored), as is ``token_info`` for a strategy
    registered without it (every one but ``"posterior"``)."""
    if isinstance(strategy, Strategy):
        if options:
            raise TypeError(f"strategy is a {type(strategy).__name__} object: set {sorted(options)} on it, not here")
        return strategy
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {tuple(STRATEGIES)} or a Strategy, got {strategy!r}")
    spec = STRATEGIES[strategy]
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise TypeError(f"unknown decoding options {unknown} (strategy options: {tuple(OPTIONS)})")
    unused = [o for o in options if o not in spec.options]
    if unused:
        takes = ", ".join(spec.options) or "none"
        raise ValueError(f"strategy {strategy!r} does not use {', '.join(unused)} (it takes: {takes})")
    for name, value in options.items():
        choices = OPTIONS[name].choices
        if choices is not None:
            _choice(value, name, choices)
    if token_info is not None and not spec.token_info:
        raise ValueError("token_info needs strategy='posterior' and a spindle schedule (spindle_lambda > 0)")
    return spec.build(schedule or Schedule(), token_info, **options)


def _posterior(schedule: Schedule, token_info: torch.Tensor | None, reveal: str = OPTIONS["reveal"].default,
               special_ids: IdsLike = None) -> Strategy:
    if token_info is None:
        if reveal != "exact":
            raise ValueError(f"reveal={reveal!r} applies only to the spindle posterior (strategy='posterior' with "
                             "token_info from a spindle schedule)")
        if special_ids is not None:
            raise ValueError("special_ids applies only to the spindle posterior (strategy='posterior' with token_info)")
        return PosteriorStep(schedule)
    return SpindlePosteriorStep(schedule, token_info, reveal=reveal, special_ids=special_ids)


register_strategy("posterior", _posterior, options=("reveal", "special_ids"), token_info=True,
                  help="DiffusionBERT's absorbing posterior (per token with a spindle schedule's token_info)")
register_strategy("topk", lambda schedule, _info, **o: TopKStep(schedule, **o),
                  options=("gumbel_temperature", "confidence", "scores", "counts"),
                  help="the most confident positions, as many as the schedule says (MaskGIT / LLaDA)")
register_strategy("threshold", lambda _schedule, _info, **o: ThresholdStep(**o),
                  options=("threshold", "min_per_step", "max_per_step", "confidence", "scores"),
                  help="adaptive: every confidence at least --threshold (Fast-dLLM)")
register_strategy("factor", lambda _schedule, _info, **o: FactorStep(**o), options=("factor", "confidence", "scores"),
                  help="adaptive: Fast-dLLM's dynamic threshold 1 - factor / (n + 1)")
register_strategy("entropy_bound", lambda _schedule, _info, **o: EntropyBoundStep(**o),
                  options=("gamma", "min_per_step", "max_per_step", "order", "scores"),
                  help="adaptive: the entropy bound (EB-sampler)")
register_strategy("llada", lambda schedule, _info, **o: TopKStep(schedule, scores="raw", counts="even", **o),
                  options=("confidence",),
                  help="preset: LLaDA's generate (even split, raw float64 confidence; confidence=random for "
                  "its random remasking)")
register_strategy("fast-dllm", lambda _schedule, _info, **o: ThresholdStep(scores="raw", **o), options=("threshold",),
                  help="preset: Fast-dLLM's threshold rule (raw float64 confidence)")
register_strategy("fast-dllm-factor", lambda _schedule, _info, **o: FactorStep(scores="raw", **o),
                  options=("factor",), help="preset: Fast-dLLM's factor rule (raw float64 confidence)")
register_strategy("eb-sampler", lambda _schedule, _info, **o: EntropyBoundStep(scores="raw", **o),
                  options=("gamma", "order"), help="preset: the EB-sampler (raw float64 entropies)")
