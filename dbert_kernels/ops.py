"""Public ops: validate user input once, resolve defaults, dispatch to a backend.

Each op has the same semantics on every backend (see :mod:`dbert_kernels.reference`); ``backend``
is ``"auto"`` (Triton for CUDA tensors, native C++ for CPU tensors when built, else the
reference), or a name from :func:`dbert_kernels.backends.backend_names` to force one.
"""

from __future__ import annotations

from typing import Any

import torch

from . import reference
from ._validation import (
    IdsLike,
    check_fits_dtype,
    check_ids_in_range,
    check_int_tensor,
    check_logits,
    check_not_meta,
    check_offset,
    check_probability,
    check_readable_rows,
    check_row_index,
    check_sampling_params,
    check_seed,
    check_token_id,
    default_banned,
    vocab_table,
)
from .backends import resolve_backend
from .params import SamplingParams
from .random import SeedLike
from .schedules import Schedule

__all__ = ["spindle_mask", "sample", "sample_absorbing", "topk_unmask", "unmask_decision"]


def spindle_mask(
    ids: torch.Tensor,
    t: torch.Tensor | float,
    schedule: Schedule,
    token_info: torch.Tensor | None = None,
    *,
    mask_id: int,
    protected_ids: IdsLike = None,
    vocab_size: int | None = None,
    seed: SeedLike = 0,
    offset: SeedLike = 0,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward process: mask tokens of ``ids`` at time ``t`` under ``schedule``.

    Args:
        ids: ``[B, L]`` integer token ids (int64, int32, int16, int8 or uint8; ``mask_id`` must fit).
        t: time per row, ``[B]`` or a scalar, in ``[0, schedule.T]``.
        schedule: the noise schedule; with ``spindle_lambda > 0`` per-token keep probabilities
            follow the spindle term and ``token_info`` is required.
        token_info: ``[V]`` float token information (:func:`token_information` of the same form).
        mask_id: id written at masked positions.
        protected_ids: ids never masked (pad, ``[CLS]``, ``[SEP]``...); also excluded from the
            sentence mean of the spindle term.
        vocab_size: V, needed only when ``token_info`` is not given (ids are checked against it).
        seed, offset: Philox key and fourth counter word (ints, or 0-d integer tensors as in
            :func:`sample_absorbing`); same inputs + seed -> same mask.

    Returns:
        ``(noised_ids, masked)``: ``noised_ids`` like ``ids`` with ``mask_id`` where masked;
        ``masked`` ``[B, L]`` bool.
    """
    check_int_tensor(ids, "ids", dims=2)
    check_seed(seed)
    check_offset(offset)
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a dbert_kernels.Schedule, got {type(schedule).__name__}")
    device = ids.device
    if token_info is not None:
        if not isinstance(token_info, torch.Tensor) or token_info.dim() != 1:
            raise ValueError("token_info must be a 1-D float tensor [V]")
        if not token_info.is_floating_point() or not torch.isfinite(token_info).all():
            raise ValueError("token_info must hold finite floats (see dbert_kernels.token_information)")
        if vocab_size is not None and vocab_size != token_info.numel():
            raise ValueError(f"vocab_size={vocab_size} but token_info has {token_info.numel()} entries")
        vocab_size = token_info.numel()
        info = token_info.to(device=device, dtype=torch.float32)
    elif schedule.is_spindle:
        raise ValueError(
            "a spindle schedule needs token_info: pass token_information(counts, form) computed "
            "from the training corpus's token counts"
        )
    else:
        if vocab_size is None:
            raise ValueError("pass vocab_size (or token_info) so that ids can be checked")
        info = torch.zeros(vocab_size, dtype=torch.float32, device=device)
    check_token_id(mask_id, vocab_size, "mask_id")
    check_fits_dtype(mask_id, ids.dtype, "mask_id")
    check_ids_in_range(ids, vocab_size, "ids")
    if schedule.is_spindle and schedule.spindle_form == "paper" and (info <= 0).any():
        raise ValueError("paper-form token_info (H = -log freq) must be > 0 everywhere")
    protected = vocab_table(protected_ids, vocab_size, device, "protected_ids")
    t_rows = torch.as_tensor(t, dtype=torch.float64)
    if t_rows.dim() == 0:
        t_rows = t_rows.expand(ids.shape[0])
    if t_rows.shape != (ids.shape[0],):
        raise ValueError(f"t must be a scalar or a [B] = [{ids.shape[0]}] tensor, got {tuple(t_rows.shape)}")
    base = schedule.alphabar(t_rows).to(device=device, dtype=torch.float32)
    amp = schedule.spindle_amplitude(t_rows).to(device=device, dtype=torch.float32)
    form = schedule.spindle_form if schedule.is_spindle else "none"
    _, impl = resolve_backend(backend, device)
    return impl.spindle_mask(ids, base, amp, info, protected, form, mask_id, seed, offset)


def sample_absorbing(
    logits: torch.Tensor,
    ids: torch.Tensor | None = None,
    *,
    mask_id: int | None = None,
    unmask_prob: float | torch.Tensor = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    banned_ids: IdsLike = None,
    seed: SeedLike = 0,
    offset: SeedLike = 0,
    row_index: torch.Tensor | None = None,
    return_entropy: bool = False,
    return_margin: bool = False,
    validate: bool = True,
    backend: str = "auto",
) -> tuple[torch.Tensor, ...]:
    """Categorical sampling from logits fused with the absorbing posterior step.

    Args:
        logits: ``[R, V]`` float32 / float16 / bfloat16 (one row per position).
        ids: ``[R]`` current token of each position, or None: every row is ``[MASK]``.
        mask_id: the ``[MASK]`` id (required with ``ids``; always banned from the output).
        unmask_prob: probability (float or ``[R]``) that a masked row is revealed at this step,
            ``Schedule.unmask_probability(s, t)``; 1 reveals every masked row.
        temperature: > 0 samples from ``softmax(logits / temperature)``; 0 is greedy, and so is
            a temperature so small that ``1 / temperature`` overflows float32.
        top_k: keep the ``top_k`` largest logits (ties at the boundary kept); None: all.
        top_p: nucleus filter in (0, 1]; None: off (the exact rule: :mod:`dbert_kernels.reference`).
        banned_ids: ids never returned, as integer ids or a ``[V]`` bool mask; default
            bert-base-uncased's [PAD] [CLS] [SEP] [MASK].
        seed, offset: Philox key and counter word (use the step as offset): Python ints, or 0-d
            integer tensors on any device (a tensor seed is read as the bit pattern of its int64
            value), so that a compiled or graph-captured step can take new values without
            recompiling.
        row_index: ``[R]`` int Philox row ids in ``[0, 2**32)`` (default ``arange(R)``); pass each
            row's global position when sampling a subset so that results do not depend on it.
        return_entropy: also return the Shannon entropy (nats) of each row's filtered
            distribution (at temperature 1 when greedy, like the confidence).
        return_margin: also return top-1 minus top-2 probability of that distribution (1.0 when
            one token is kept).
        validate: check the inputs (ids and banned ids in range, probabilities in [0, 1],
            ``row_index`` in range, every revealed row of logits free of NaN / +inf and with an
            allowed finite logit). False skips every check that needs a host synchronisation
            (for CUDA graphs and ``torch.compile``); a revealed row that cannot be sampled then
            gives token ``-1`` and NaN confidence / entropy / margin on every backend.

    Returns:
        ``(tokens, confidence)`` (``[R]`` int64 and float32), followed by ``entropy`` and then
        ``margin`` (``[R]`` float32) when asked for. Revealed rows hold the sampled token and its
        probability under the filtered distribution (at temperature 1 when greedy). Rows unmasked
        on entry keep their token with confidence 1, entropy 0, margin 1; masked rows not revealed
        stay ``mask_id`` with confidence 0 and NaN entropy and margin. Logits of rows that are not
        revealed are never read.
    """
    vocab = check_logits(logits)
    check_sampling_params(temperature, top_k, top_p, vocab)
    check_seed(seed)
    check_offset(offset, validate)
    n_rows = logits.shape[0]
    device = logits.device
    banned_ids = default_banned(banned_ids, vocab)
    banned = vocab_table(banned_ids, vocab, device, "banned_ids", validate)
    if ids is not None:
        check_int_tensor(ids, "ids", dims=1)
        if ids.shape[0] != n_rows:
            raise ValueError(f"ids has {ids.shape[0]} rows but logits have {n_rows}")
        if ids.device != device:
            raise ValueError(f"ids are on {ids.device} but logits on {device}")
        if validate:
            check_ids_in_range(ids, vocab, "ids")
    if mask_id is not None:
        check_token_id(mask_id, vocab, "mask_id")
        banned = banned.clone()
        banned[mask_id] = True
    elif ids is not None:
        raise ValueError("pass mask_id together with ids (it marks the rows still to sample)")
    if validate and bool(banned.all()):
        raise ValueError("every token of the vocabulary is banned: nothing can be sampled")
    prob = check_probability(unmask_prob, n_rows, device, "unmask_prob", validate)
    row_index = check_row_index(row_index, n_rows, device, validate)
    _, impl = resolve_backend(backend, device)
    # A backend that checks each row while it reads it (CHECKS_LOGITS: bad rows come back as
    # token -1) needs no extra pass over the logits here.
    checks_rows = getattr(impl, "CHECKS_LOGITS", False)
    if validate and not checks_rows:  # the rows the absorbing decision reveals: the ones read
        is_masked = torch.ones(n_rows, dtype=torch.bool, device=device) if ids is None else ids == mask_id
        check_readable_rows(logits, reference.reveal_rows(is_masked, prob, row_index, seed, offset), banned)
    params = SamplingParams.create(
        temperature=temperature, top_k=top_k, top_p=top_p, banned=banned,
        with_entropy=return_entropy, with_margin=return_margin,
    )
    mask = -1 if mask_id is None else mask_id
    tokens, confidence, entropy, margin = impl.sample(logits, ids, prob, row_index, mask, params, seed, offset)
    if validate and checks_rows and bool((tokens < 0).any()):
        check_readable_rows(logits, tokens < 0, banned)  # raises, naming the first bad row
    out: tuple[torch.Tensor, ...] = (tokens, confidence)
    if return_entropy:
        out += (entropy,)
    if return_margin:
        out += (margin,)
    return out


def sample(logits: torch.Tensor, **options: Any) -> tuple[torch.Tensor, ...]:
    """Draw one token per row of ``logits`` [R, V]: ``(tokens [R] int64, confidence [R] float32)``
    followed by ``entropy`` and ``margin`` when asked for.

    :func:`sample_absorbing` with every row masked and revealed; it takes that function's keyword
    arguments but ``mask_id`` and ``unmask_prob`` (``temperature``, ``top_k``, ``top_p``,
    ``banned_ids``, ``seed``, ``offset``, ``row_index``, ``return_entropy``, ``return_margin``,
    ``validate``, ``backend``), with the same defaults.
    """
    for name in ("mask_id", "unmask_prob"):
        if name in options:
            raise TypeError(f"sample() takes no {name!r}: every row is sampled; use sample_absorbing")
    return sample_absorbing(logits, None, **options)


def unmask_decision(
    is_masked: torch.Tensor,
    unmask_prob: float | torch.Tensor,
    *,
    seed: SeedLike = 0,
    offset: SeedLike = 0,
    row_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which masked rows :func:`sample_absorbing` reveals with the same seed and offset.

    ``is_masked``: ``[R]`` bool; returns ``[R]`` bool. Lets a sampler decide first and then ask
    the denoiser for the logits of the revealed rows only. ``seed`` / ``offset`` / ``row_index``
    as in :func:`sample_absorbing`.
    """
    if not isinstance(is_masked, torch.Tensor) or is_masked.dtype != torch.bool or is_masked.dim() != 1:
        raise TypeError("is_masked must be a 1-D bool tensor")
    check_seed(seed)
    check_offset(offset)
    n_rows = is_masked.shape[0]
    prob = check_probability(unmask_prob, n_rows, is_masked.device, "unmask_prob")
    row_index = check_row_index(row_index, n_rows, is_masked.device)
    return reference.reveal_rows(is_masked, prob, row_index, seed, offset)


def topk_unmask(
    ids: torch.Tensor,
    candidates: torch.Tensor,
    confidence: torch.Tensor,
    k: torch.Tensor | int,
    *,
    mask_id: int,
    gumbel_temperature: float = 0.0,
    vocab_size: int | None = None,
    seed: SeedLike = 0,
    offset: SeedLike = 0,
    backend: str = "auto",
) -> torch.Tensor:
    """Confidence-based unmasking (MaskGIT / LLaDA style).

    Args:
        ids: ``[B, L]`` current ids; positions equal to ``mask_id`` are eligible.
        candidates: ``[B, L]`` the token each position would take (e.g. from :func:`sample`).
        confidence: ``[B, L]`` float, in [0, 1], of each candidate.
        k: per-row count ``[B]`` (or an int): reveal ``min(k[b], #masked in row b)`` positions.
        gumbel_temperature: 0 ranks by confidence; > 0 ranks by
            ``log(confidence) + gumbel_temperature * Gumbel`` (seeded), for diversity.
        mask_id: an int id (it must fit the ids' dtype).
        vocab_size: V; when given, the candidates at masked positions must lie in ``[0, V)``.
            They must always be >= 0 and fit the ids' dtype (no silent wrap-around).
        seed, offset: Python ints or 0-d integer tensors, as in :func:`sample_absorbing`.

    Returns:
        New ids ``[B, L]`` (same dtype): the chosen positions take their candidate; ties in the
        score go to the lower position.
    """
    check_int_tensor(ids, "ids", dims=2)
    check_int_tensor(candidates, "candidates", dims=2)
    check_seed(seed)
    check_offset(offset)
    if isinstance(mask_id, bool) or not isinstance(mask_id, int):
        raise TypeError(f"mask_id must be an int token id, got {mask_id!r}")
    check_fits_dtype(mask_id, ids.dtype, "mask_id")
    if vocab_size is not None:
        check_token_id(mask_id, vocab_size, "mask_id")
    if candidates.shape != ids.shape or confidence.shape != ids.shape:
        raise ValueError(
            f"ids, candidates and confidence must share one [B, L] shape; got {tuple(ids.shape)}, "
            f"{tuple(candidates.shape)}, {tuple(confidence.shape)}"
        )
    if not confidence.is_floating_point():
        raise TypeError(f"confidence must be a float tensor, got {confidence.dtype}")
    check_not_meta(confidence, "confidence")
    eligible = ids == mask_id
    cand_e = candidates[eligible]
    if bool((cand_e == mask_id).any()):
        raise ValueError("a candidate token equals mask_id: sample candidates with mask_id banned")
    if cand_e.numel():
        limit = torch.iinfo(ids.dtype).max + 1 if vocab_size is None else min(vocab_size, torch.iinfo(ids.dtype).max + 1)
        if int(cand_e.min()) < 0 or int(cand_e.max()) >= limit:
            raise ValueError(
                f"candidates at masked positions must lie in [0, {limit}) (the vocabulary, and the "
                f"ids' dtype {ids.dtype}); got min {int(cand_e.min())}, max {int(cand_e.max())}"
            )
    conf_e = confidence[eligible]
    if conf_e.numel() and (torch.isnan(conf_e).any() or (conf_e < 0).any() or (conf_e > 1).any()):
        raise ValueError("confidence must lie in [0, 1] (no NaN) at masked positions")
    if isinstance(gumbel_temperature, bool) or not isinstance(gumbel_temperature, (int, float)) or not (
        0 <= gumbel_temperature < float("inf")
    ):
        raise ValueError(f"gumbel_temperature must be a finite float >= 0, got {gumbel_temperature!r}")
    batch = ids.shape[0]
    k_t = torch.as_tensor(k, device=ids.device)
    if k_t.is_floating_point() or k_t.dtype == torch.bool:
        raise TypeError("k must be an int or an integer tensor [B]")
    k_t = k_t.to(torch.int64)
    if k_t.dim() == 0:
        k_t = k_t.expand(batch)
    if k_t.shape != (batch,):
        raise ValueError(f"k must be an int or a [B] = [{batch}] tensor, got shape {tuple(k_t.shape)}")
    if k_t.numel() and int(k_t.min()) < 0:
        raise ValueError("k must be >= 0")
    _, impl = resolve_backend(backend, ids.device)
    return impl.topk_unmask(
        ids, candidates, confidence.to(torch.float32), k_t, mask_id, float(gumbel_temperature), seed, offset
    )
