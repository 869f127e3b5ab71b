"""The reverse-process loop: generation from all ``[MASK]`` with any denoiser.

``generate`` starts every free position at ``[MASK]`` and, block by block (laid from the first
masked position; one block to the end unless ``block_length`` is given; the steps shared over
the blocks that hold masked positions), runs a short loop: build the step's
:class:`~dbert_kernels.strategies.StepState`, let the strategy turn it into new ids, optionally
end rows that have written their stop id, repeat until the block has no ``[MASK]`` left or its
share of ``steps`` is used. The strategies (:mod:`dbert_kernels.strategies`) hold the reveal
rules; fixed-schedule ones walk the time grid ``t_k = T (n - k) / n`` of the block's ``n`` steps
from ``T`` down to 0, so their last step reveals everything.

The denoiser is asked only for the positions a step needs, and only for the batch rows that have
such positions (a row with nothing in play costs nothing); a step that needs no logits makes no
call. With ``cache`` the calls go through a block key/value cache (:mod:`dbert_kernels.cache`).
Randomness is counter-based (seed, position, global step): the same seed gives the same text on
every backend, and the posterior's reveal decisions do not depend on the denoiser's outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch

from ._validation import IdsLike, check_ids_in_range, check_seed, check_token_id, default_banned
from .cache import CACHE_MODES, BlockCache
from .denoisers import Denoiser, as_denoiser
from .schedules import Schedule
from .strategies import DEFAULT_STRATEGY, OPTIONS, STRATEGIES, Sampling, StepState, Strategy, make_strategy

__all__ = ["generate", "build_template", "GenerateStats", "SAMPLING_KEYWORDS"]


def build_template(
    batch_size: int,
    seq_len: int,
    mask_id: int,
    *,
    prefix: torch.Tensor | Sequence[int] | None = None,
    fixed: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The starting ids ``[B, L]``: ``mask_id`` at free positions, given tokens elsewhere.

    ``fixed``: ``[L]`` or ``[B, L]`` ids with ``-1`` at free positions; ``prefix``: ``[P]`` or
    ``[B, P]`` ids written at the start of each row (on top of ``fixed``).
    """
    ids = torch.full((batch_size, seq_len), mask_id, dtype=torch.int64, device=device)
    if fixed is not None:
        fixed = torch.as_tensor(_integer_ids(fixed, "fixed"), dtype=torch.int64, device=ids.device)
        if fixed.dim() == 1:
            fixed = fixed.expand(batch_size, -1)
        if fixed.shape != (batch_size, seq_len):
            raise ValueError(f"fixed must be [L] or [B, L] = [{batch_size}, {seq_len}], got {tuple(fixed.shape)}")
        if fixed.numel() and int(fixed.min()) < -1:
            raise ValueError(f"fixed holds {int(fixed.min())}: use -1 for free positions and token ids elsewhere")
        ids = torch.where(fixed >= 0, fixed, ids)
    if prefix is not None:
        prefix_t = torch.as_tensor(_integer_ids(prefix, "prefix"), dtype=torch.int64, device=ids.device)
        if prefix_t.dim() == 1:
            prefix_t = prefix_t.expand(batch_size, -1)
        if prefix_t.dim() != 2 or prefix_t.shape[0] != batch_size or prefix_t.shape[1] > seq_len:
            raise ValueError(
                f"prefix must be [P] or [B, P] with P <= seq_len={seq_len}, got {tuple(prefix_t.shape)}"
            )
        ids[:, : prefix_t.shape[1]] = prefix_t
    return ids


def _integer_ids(ids: Any, name: str) -> Any:
    """``ids`` (a tensor or a sequence), refused when it holds anything but integer ids: a float
    would be truncated and a bool tensor taken for the ids 0 and 1."""
    t = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(ids)
    if t.numel() and (t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool):
        raise TypeError(f"{name} must hold integer token ids, got dtype {t.dtype}")
    return ids


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


@dataclass
class GenerateStats:
    """What a generation cost.

    Attributes:
        calls: denoiser calls (forward passes of the network).
        steps: steps run (a step that reveals nothing makes no call).
        rows_forwarded: batch rows the network ran on, summed over calls (rows with nothing
            to reveal are skipped); ``rows_forwarded / batch_size`` is the calls per sequence.
        positions_forwarded: token positions the network ran on, summed over calls (with a
            cache, only the block's positions between refreshes).
        early_stopped_rows: rows that ended with a stop id before the last step.
        filled_positions: masked positions after a row's stop id filled with ``pad_id``.
        revealed: positions revealed at each step (one entry per step).
    """

    calls: int = 0
    steps: int = 0
    rows_forwarded: int = 0
    positions_forwarded: int = 0
    early_stopped_rows: int = 0
    filled_positions: int = 0
    revealed: list[int] = field(default_factory=list)

    def calls_per_sequence(self, batch_size: int) -> float:
        return self.rows_forwarded / batch_size


def _blocks(ids: torch.Tensor, mask_id: int, block_length: int | None) -> list[tuple[int, int]]:
    """The decoding blocks ``[start, end)`` of the template ``ids``: laid from the first position
    that a row leaves masked (the end of the prompt / fixed prefix), ``block_length`` wide (None:
    one block to the end), and only those that hold a masked position."""
    seq_len = ids.shape[1]
    masked = (ids == mask_id).any(dim=0).tolist()
    if True not in masked:
        return []
    first = masked.index(True)
    width = seq_len - first if block_length is None else block_length
    return [(a, min(a + width, seq_len)) for a in range(first, seq_len, width) if any(masked[a : a + width])]


class _Ask:
    """Calls the denoiser for the rows a step needs; counts calls; runs the block cache and
    classifier-free guidance."""

    def __init__(self, den: Denoiser, stats: GenerateStats, cache: BlockCache | None, *,
                 prompt: torch.Tensor | None = None, cfg_scale: float = 0.0, mask_id: int = 0) -> None:
        self.den = den
        self.stats = stats
        self.cache = cache
        self.prompt = prompt
        self.cfg_scale = cfg_scale
        self.mask_id = mask_id

    def __call__(self, ids: torch.Tensor, t: float, rows: torch.Tensor) -> torch.Tensor:
        batch = ids.shape[0]
        needed = rows.any(dim=1)
        if self.cache is not None and self.cache.needs_refresh():
            # a refresh fills every row that has masks left in the block (the others make no
            # more calls in this block; the next block opens with a refresh)
            needed = needed | (ids[:, self.cache.start:self.cache.end] == self.cache.mask_id).any(dim=1)
        sel = None if bool(needed.all()) else needed.nonzero().squeeze(1)
        sub_ids, sub_rows = (ids, rows) if sel is None else (ids[sel], rows[sel])
        t_rows = torch.full((sub_ids.shape[0],), t, dtype=torch.float32, device=ids.device)
        self.stats.calls += 1
        if self.cfg_scale:
            return self._guided(sub_ids, t_rows, sub_rows, sel)
        self.stats.rows_forwarded += sub_ids.shape[0]
        if self.cache is None:
            self.stats.positions_forwarded += sub_ids.numel()
            return _checked(self.den(sub_ids, t=t_rows, rows=sub_rows), sub_rows)
        start, end = self.cache.span(sub_ids.shape[1])
        self.stats.positions_forwarded += sub_ids.shape[0] * (end - start)
        batch_rows = torch.arange(batch, device=ids.device) if sel is None else sel
        return _checked(self.den.cached_logits(sub_ids, t_rows, sub_rows, self.cache, batch_rows), sub_rows)

    def _guided(self, ids: torch.Tensor, t_rows: torch.Tensor, rows: torch.Tensor,
                sel: torch.Tensor | None) -> torch.Tensor:
        """LLaDA's classifier-free guidance: the same call also runs a copy whose prompt is
        masked, and the logits are ``u + (cfg_scale + 1) (c - u)``."""
        prompt = self.prompt if sel is None else self.prompt[sel]
        unconditional = ids.masked_fill(prompt, self.mask_id)
        both = torch.cat([ids, unconditional])
        both_rows = torch.cat([rows, rows])
        self.stats.rows_forwarded += both.shape[0]
        self.stats.positions_forwarded += both.numel()
        logits = _checked(self.den(both, t=torch.cat([t_rows, t_rows]), rows=both_rows), both_rows)
        cond, uncond = logits.chunk(2)
        return uncond + (self.cfg_scale + 1) * (cond - uncond)


def _checked(logits: Any, rows: torch.Tensor) -> torch.Tensor:
    """The denoiser's answer, if it is ``[rows.sum(), V]`` logits; else an error naming the denoiser."""
    wanted = int(rows.sum())
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != wanted:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"the denoiser returned logits {got} but was asked for {wanted} positions: a Denoiser's "
            "logits(ids, t, rows) must return [rows.sum(), V], one row per True entry of rows in row-major order"
        )
    return logits


def _stop_early(ids: torch.Tensor, mask_id: int, stop: torch.Tensor, pad_id: int, stats: GenerateStats) -> None:
    """Fill the masks after the first stop id of every row whose text before it is complete."""
    masked = ids == mask_id
    live = masked.any(dim=1)
    if not bool(live.any()):
        return
    is_stop = torch.isin(ids, stop)
    length = ids.shape[1]
    pos = torch.arange(length, device=ids.device)
    first_stop = torch.where(is_stop, pos, torch.full_like(pos, length)).min(dim=1).values
    first_mask = torch.where(masked, pos, torch.full_like(pos, length)).min(dim=1).values
    ended = live & (first_stop < first_mask)  # a stop id with nothing masked before it
    if bool(ended.any()):
        fill = ended[:, None] & masked
        stats.early_stopped_rows += int(ended.sum())
        stats.filled_positions += int(fill.sum())
        ids.masked_fill_(fill, pad_id)


#: The flat keywords of :func:`generate` that build its :class:`Sampling`: its fields but ``mask_id``.
SAMPLING_KEYWORDS = tuple(f.name for f in fields(Sampling) if f.name != "mask_id")


@torch.no_grad()
def generate(
    denoiser: Any,
    *,
    mask_id: int,
    batch_size: int = 1,
    seq_len: int = 64,
    steps: int = 16,
    schedule: Schedule | None = None,
    strategy: str | Strategy = DEFAULT_STRATEGY,
    sampling: Sampling | None = None,
    prefix: torch.Tensor | Sequence[int] | None = None,
    fixed: torch.Tensor | None = None,
    token_info: torch.Tensor | None = None,
    block_length: int | None = None,
    cfg_scale: float = 0.0,
    stop_ids: IdsLike = None,
    pad_id: int | None = None,
    cache: str | None = None,
    refresh_every: int | None = None,
    progress: bool = True,
    device: torch.device | str | None = None,
    on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    return_stats: bool = False,
    **options: Any,
) -> torch.Tensor | tuple[torch.Tensor, GenerateStats]:
    """Generate ``[batch_size, seq_len]`` token ids by the reverse diffusion process.

    Two objects say how to decode: ``sampling`` (a :class:`~dbert_kernels.strategies.Sampling`:
    how a token is drawn) and ``strategy`` (which positions each step reveals). The flat keywords
    in ``options`` are a convenience that builds them: ``temperature``, ``top_k``, ``top_p``,
    ``banned_ids``, ``seed``, ``backend`` build the :class:`Sampling` (not with ``sampling=``);
    the strategy hyper-parameters (:data:`~dbert_kernels.strategies.OPTIONS`: ``threshold``,
    ``gamma``, ``confidence``, ``scores``, ``counts``, ``order``, ``factor``, ``min_per_step``,
    ``max_per_step``, ``gumbel_temperature``, ``reveal``, ``special_ids``) build the strategy
    named by ``strategy`` (not with a :class:`Strategy` object). An option the strategy does not
    take is refused.

    Args:
        denoiser: a :class:`~dbert_kernels.denoisers.Denoiser` (the project's ``DiffusionBert``
            is one), a Hugging Face masked LM, or a callable ``ids [B, L] -> logits [B, L, V]``
            (see :func:`as_denoiser`).
        mask_id: the ``[MASK]`` id (always banned).
        steps: denoising steps (>= 1); for the adaptive strategies an upper bound on the
            denoiser calls. With blocks, the steps are shared out over the blocks that hold
            masked positions (``steps >=`` their number), the remainder one each to the first.
        schedule: noise schedule (default: linear D3PM).
        strategy: a name registered in :data:`~dbert_kernels.strategies.STRATEGIES`
            (``"posterior"``, ``"topk"``, ``"threshold"``, ``"factor"``, ``"entropy_bound"``,
            the presets ``"llada"``, ``"fast-dllm"``, ``"fast-dllm-factor"``, ``"eb-sampler"``,
            or one registered with :func:`~dbert_kernels.register_strategy`) or a
            :class:`~dbert_kernels.strategies.Strategy` object.
        sampling: how tokens are drawn (default: ``Sampling()``: temperature 1, full vocabulary,
            seed 0, backend ``"auto"``).
        prefix, fixed: tokens to condition on (:func:`build_template`); never changed.
        token_info: ``[V]`` token information of a spindle ``schedule`` (``strategy="posterior"``):
            reveal probabilities then follow the per-token spindle keep probability
            (:class:`~dbert_kernels.strategies.SpindlePosteriorStep`; its ``special_ids``
            default to the banned ids); None: the sentence-level alphabar.
        block_length: decode left-to-right blocks of this many positions, each to completion
            before the next opens, laid from the first masked position (the end of the prompt /
            fixed prefix), as LLaDA and Fast-dLLM lay them (None: one block to the end).
        cfg_scale: classifier-free guidance as in LLaDA (0: off): every call also runs a copy
            of the rows with the template's given tokens (the prompt) masked, and the logits are
            ``u + (cfg_scale + 1) (c - u)``. Not with ``cache``.
        stop_ids: ids that end a row (e.g. ``[SEP]``); a row whose first stop id has nothing
            masked before it gets its remaining masks filled with ``pad_id`` and no more calls
            (counted in the stats). None: off.
        pad_id: the fill id of ``stop_ids``.
        cache: ``"prefix"`` or ``"dual"``: per-layer keys/values of the positions outside the
            current block are computed once per block (and every ``refresh_every`` calls) and
            reused; the network then runs only on the block (dual) or the block and what follows
            (prefix). An approximation for a bidirectional model; needs a denoiser that can take
            a cache (``supports_cache``) and ``block_length``. None: off.
        refresh_every: with ``cache``: recompute the cache every this many calls (1: every
            call, which equals no cache exactly). None: once per block.
        progress: show a progress bar over the steps.
        device: where the ids live (default: the device of ``fixed`` / ``prefix`` when they are
            tensors, else the denoiser's ``device``, else the CPU).
        on_step: called after every step as ``on_step(step, ids, revealed)`` (``revealed``:
            ``[B, L]`` bool, the positions this step revealed or filled).
        return_stats: also return a :class:`GenerateStats`.

    Options are checked before any call: ids must be integers (a float or bool ``prefix`` /
    ``fixed`` is a TypeError), ``mask_id``, ``pad_id`` and ``stop_ids`` must lie in the
    vocabulary, and an option that the rest of the call would ignore is refused rather than
    dropped (a hyper-parameter the strategy does not take, ``refresh_every`` without ``cache``,
    ``cache`` without ``block_length``, ``pad_id`` without ``stop_ids``).

    Returns:
        ``[batch_size, seq_len]`` int64 ids with no ``mask_id`` left; with ``return_stats``,
        ``(ids, stats)``.
    """
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(seq_len, "seq_len")
    _check_positive_int(steps, "steps")
    check_token_id(mask_id, None, "mask_id")
    sampling = _sampling(sampling, options, mask_id)
    check_seed(sampling.seed)
    _check_unused_options(cache, block_length, refresh_every, stop_ids, pad_id, mask_id, cfg_scale)
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: no CUDA GPU is available (use device='cpu' or leave it None)")
    schedule = schedule or Schedule()
    if strategy == "posterior" and token_info is not None and "special_ids" not in options:
        options["special_ids"] = sampling.banned_ids
    rule = make_strategy(strategy, schedule, token_info=token_info, **options)
    if block_length is not None:
        _check_positive_int(block_length, "block_length")
    if refresh_every is not None:
        _check_positive_int(refresh_every, "refresh_every")
    den = as_denoiser(denoiser)
    kv = None
    if cache is not None:
        kv = BlockCache(cache, mask_id=mask_id, batch_size=batch_size, refresh_every=refresh_every)
        if not getattr(den, "supports_cache", False):
            raise ValueError(
                f"cache={cache!r}: {type(denoiser).__name__} cannot take a block cache (it needs a BERT-style "
                "encoder: a Hugging Face BertModel-like masked LM or DiffusionBert); pass cache=None"
            )
    if device is None:
        given = next((x for x in (fixed, prefix) if isinstance(x, torch.Tensor)), None)
        device = given.device if given is not None else getattr(den, "device", None) or torch.device("cpu")
    ids = build_template(batch_size, seq_len, mask_id, prefix=prefix, fixed=fixed, device=device)
    blocks = _blocks(ids, mask_id, block_length)
    if steps < len(blocks):
        raise ValueError(f"steps={steps} is fewer than the {len(blocks)} blocks of block_length={block_length} "
                         "that hold masked positions")
    row_index = torch.arange(batch_size * seq_len, device=ids.device)
    vocab = getattr(den, "vocab_size", 0) or None
    if vocab is not None:
        check_token_id(mask_id, vocab, "mask_id")
        if pad_id is not None:
            check_token_id(pad_id, vocab, "pad_id")
        if stop_ids is not None:
            check_ids_in_range(torch.as_tensor(list(stop_ids), dtype=torch.int64), vocab, "stop_ids")
        sampling = replace(sampling, banned_ids=default_banned(sampling.banned_ids, vocab))
        check_ids_in_range(ids, vocab, "the fixed / prefix ids")
    stop = None if stop_ids is None else torch.as_tensor(list(stop_ids), dtype=torch.int64, device=ids.device)
    stats = GenerateStats()
    ask = _Ask(den, stats, kv, prompt=(ids != mask_id) if cfg_scale else None, cfg_scale=float(cfg_scale),
               mask_id=mask_id)
    share = [steps // len(blocks) + (1 if i < steps % len(blocks) else 0) for i in range(len(blocks))]
    steps = sum(share)  # 0 when nothing is masked
    pos = torch.arange(seq_len, device=ids.device)
    offset = 0
    bar = _progress(steps, progress)
    try:
        for (start, end), budget in zip(blocks, share, strict=True):
            in_block = (pos >= start) & (pos < end)
            n_free = ((ids == mask_id) & in_block).sum(dim=1)
            if kv is not None:
                kv.open_block(start, end)
            grid = [schedule.T * (budget - k) / budget for k in range(budget + 1)]
            for k in range(budget):
                in_play = (ids == mask_id) & in_block
                if not bool(in_play.any()):
                    break
                state = StepState(ids=ids, in_play=in_play, n_free=n_free, t=grid[k], s=grid[k + 1],
                                  offset=offset + k, steps_left=budget - k, row_index=row_index, budget=budget)
                before = ids.clone()
                ids = rule.step(state, ask, sampling)
                if stop is not None:
                    _stop_early(ids, mask_id, stop, pad_id, stats)
                revealed = ids != before
                stats.steps += 1
                stats.revealed.append(int(revealed.sum()))
                if on_step is not None:
                    on_step(offset + k, ids, revealed)
                bar.update(1)
            offset += budget
    finally:
        bar.close()
    if bool((ids == mask_id).any()):  # pragma: no cover - guaranteed by the last step of every block
        raise RuntimeError("generation ended with [MASK] tokens left; please report this as a bug")
    return (ids, stats) if return_stats else ids


def _sampling(sampling: Sampling | None, options: dict[str, Any], mask_id: int) -> Sampling:
    """The generation's :class:`Sampling`: ``sampling`` or one built from the flat keywords in
    ``options`` (removed from it), with ``mask_id`` filled in."""
    flat = {name: options.pop(name) for name in SAMPLING_KEYWORDS if name in options}
    if sampling is None:
        sampling = Sampling(**flat)
    elif flat:
        raise TypeError(f"pass {sorted(flat)} in sampling=Sampling(...) or as keywords, not both")
    elif not isinstance(sampling, Sampling):
        raise TypeError(f"sampling must be a dbert_kernels.Sampling, got {type(sampling).__name__}")
    unknown = [name for name in options if name not in OPTIONS]
    if unknown:
        raise TypeError(f"generate() got unexpected keyword arguments {unknown}; sampling keywords: "
                        f"{SAMPLING_KEYWORDS}, strategy options: {tuple(OPTIONS)}, strategies: {tuple(STRATEGIES)}")
    if sampling.mask_id is not None and sampling.mask_id != mask_id:
        raise ValueError(f"sampling.mask_id={sampling.mask_id} differs from mask_id={mask_id}")
    return replace(sampling, mask_id=mask_id)


def _check_unused_options(cache: str | None, block_length: int | None, refresh_every: int | None, stop_ids: IdsLike,
                          pad_id: Any, mask_id: int, cfg_scale: float) -> None:
    """Refuse an option whose value the rest of the call would ignore, or whose value is not one of
    its choices, so that nothing asked for is dropped silently."""
    if cache is not None and cache not in CACHE_MODES:
        raise ValueError(f"cache must be None or one of {CACHE_MODES}, got {cache!r}")
    if cache is not None and block_length is None:
        raise ValueError(f"cache={cache!r} needs block_length (the cache holds what lies outside the current block)")
    if refresh_every is not None and cache is None:
        raise ValueError("refresh_every is used only with a cache (cache='prefix' or 'dual')")
    if stop_ids is not None and pad_id is None:
        raise ValueError("stop_ids needs pad_id (the id that fills a row after its stop id)")
    if pad_id is not None:
        if stop_ids is None:
            raise ValueError("pad_id is used only with stop_ids (it fills a row after its stop id)")
        check_token_id(pad_id, None, "pad_id")
        if pad_id == mask_id:
            raise ValueError(f"pad_id must differ from mask_id ({mask_id}): the filled positions would stay masked")
    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)) or not (0 <= cfg_scale < float("inf")):
        raise ValueError(f"cfg_scale must be a finite number >= 0 (0: no guidance), got {cfg_scale!r}")
    if cfg_scale and cache is not None:
        raise ValueError("cfg_scale does not combine with cache (the unconditional copy has no cache); pass one")


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="denoising", unit="step", leave=False)
