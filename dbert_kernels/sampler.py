"""The reverse-process loop: generation from all ``[MASK]`` with any denoiser.

``generate`` starts every free position at ``[MASK]`` and walks the time grid
``t_k = T (steps - k) / steps`` from ``T`` down to 0 (step skipping: ``steps`` is usually far
below ``T``). At each step from ``t`` to ``s``:

* ``strategy="posterior"`` (DiffusionBERT): each masked position is revealed with probability
  ``(alphabar_s - alphabar_t) / (1 - alphabar_t)`` of the schedule's sentence-level alphabar,
  and takes a token sampled from the denoiser's filtered distribution.
* ``strategy="topk"`` (MaskGIT / LLaDA): every masked position samples a candidate; the
  ``k_b`` most confident are revealed, where ``k_b`` brings the row's masked count to
  ``round(n_free_b * (1 - alphabar_s))``.

Either way the last step (s = 0) reveals everything, so no ``[MASK]`` is left. The denoiser is
asked only for the rows that the step needs, and not at all when a step reveals nothing.
Randomness is counter-based (seed, position, step): the same seed gives the same text on every
backend, and the posterior decisions do not depend on the denoiser's outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from ._validation import IdsLike, check_ids_in_range, check_seed, default_banned
from .denoisers import as_denoiser
from .ops import sample_absorbing, topk_unmask, unmask_decision
from .schedules import Schedule

__all__ = ["generate", "build_template"]


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
        fixed = torch.as_tensor(fixed, dtype=torch.int64, device=ids.device)
        if fixed.dim() == 1:
            fixed = fixed.expand(batch_size, -1)
        if fixed.shape != (batch_size, seq_len):
            raise ValueError(f"fixed must be [L] or [B, L] = [{batch_size}, {seq_len}], got {tuple(fixed.shape)}")
        if fixed.numel() and int(fixed.min()) < -1:
            raise ValueError(f"fixed holds {int(fixed.min())}: use -1 for free positions and token ids elsewhere")
        ids = torch.where(fixed >= 0, fixed, ids)
    if prefix is not None:
        prefix_t = torch.as_tensor(prefix, dtype=torch.int64, device=ids.device)
        if prefix_t.dim() == 1:
            prefix_t = prefix_t.expand(batch_size, -1)
        if prefix_t.dim() != 2 or prefix_t.shape[0] != batch_size or prefix_t.shape[1] > seq_len:
            raise ValueError(
                f"prefix must be [P] or [B, P] with P <= seq_len={seq_len}, got {tuple(prefix_t.shape)}"
            )
        ids[:, : prefix_t.shape[1]] = prefix_t
    return ids


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


@torch.no_grad()
def generate(
    denoiser: Any,
    *,
    mask_id: int,
    batch_size: int = 1,
    seq_len: int = 64,
    steps: int = 16,
    schedule: Schedule | None = None,
    strategy: Literal["posterior", "topk"] = "posterior",
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    gumbel_temperature: float = 0.0,
    banned_ids: IdsLike = None,
    prefix: torch.Tensor | Sequence[int] | None = None,
    fixed: torch.Tensor | None = None,
    token_info: torch.Tensor | None = None,
    seed: int = 0,
    progress: bool = True,
    backend: str = "auto",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Generate ``[batch_size, seq_len]`` token ids by the reverse diffusion process.

    Args:
        denoiser: a :class:`~dbert_kernels.denoisers.Denoiser`, a Hugging Face masked LM, or a
            callable ``ids [B, L] -> logits [B, L, V]`` (see :func:`as_denoiser`).
        mask_id: the ``[MASK]`` id.
        steps: number of denoising steps (>= 1).
        schedule: noise schedule (default: linear D3PM; only its sentence-level alphabar is used).
        strategy: ``"posterior"`` or ``"topk"`` (see the module docstring).
        temperature, top_k, top_p, banned_ids: as in :func:`~dbert_kernels.sample_absorbing`
            (``mask_id`` is always banned).
        gumbel_temperature: Gumbel noise on the confidence for ``strategy="topk"``.
        prefix, fixed: tokens to condition on (:func:`build_template`); never changed.
        token_info: ``[V]`` token information of a spindle ``schedule`` (``strategy="posterior"``
            only): reveal probabilities then follow the per-token spindle alphabar of each
            position's most likely token (the authors' sampler: the clean token is unknown, so
            the information of ``argmax x0_hat`` stands in). Every masked row's logits are then
            needed at every step. None (default): the sentence-level alphabar.
        seed: Philox seed; the step index is the counter offset.
        progress: show a progress bar over the steps.
        backend: ``"auto"``, ``"reference"``, ``"triton"`` or ``"native"`` for the sampling ops.
        device: where the ids live (default: the denoiser's parameters' device, else CPU).

    Returns:
        ``[batch_size, seq_len]`` int64 ids with no ``mask_id`` left.
    """
    _check_positive_int(batch_size, "batch_size")
    _check_positive_int(seq_len, "seq_len")
    _check_positive_int(steps, "steps")
    check_seed(seed)
    if strategy not in ("posterior", "topk"):
        raise ValueError(f"strategy must be 'posterior' or 'topk', got {strategy!r}")
    schedule = schedule or Schedule()
    if token_info is not None and (strategy != "posterior" or not schedule.is_spindle):
        raise ValueError("token_info needs strategy='posterior' and a spindle schedule (spindle_lambda > 0)")
    den = as_denoiser(denoiser)
    if device is None:
        params = getattr(denoiser, "parameters", None)
        first = next(iter(params()), None) if callable(params) else None
        device = first.device if first is not None else torch.device("cpu")
    ids = build_template(batch_size, seq_len, mask_id, prefix=prefix, fixed=fixed, device=device)
    n_rows = batch_size * seq_len
    row_index = torch.arange(n_rows, device=ids.device)
    n_free = (ids == mask_id).sum(dim=1)
    vocab = getattr(den, "vocab_size", 0) or None
    if vocab is not None:
        banned_ids = default_banned(banned_ids, vocab)
        check_ids_in_range(ids, vocab, "the fixed / prefix ids")

    grid = [schedule.T * (steps - k) / steps for k in range(steps + 1)]
    bar = _progress(steps, progress)
    try:
        for k in range(steps):
            t, s = grid[k], grid[k + 1]
            masked = ids == mask_id
            if not bool(masked.any()):
                break
            t_rows = torch.full((batch_size,), t, dtype=torch.float32, device=ids.device)
            if strategy == "posterior" and token_info is not None:
                flat = masked.reshape(-1)
                logits = den(ids, t=t_rows, rows=masked)
                prob = _spindle_reveal_probability(schedule, token_info, ids, flat, logits, s, t, banned_ids)
                tokens, _ = sample_absorbing(
                    logits, ids.view(-1)[flat], mask_id=mask_id, unmask_prob=prob,
                    temperature=temperature, top_k=top_k, top_p=top_p, banned_ids=banned_ids,
                    seed=seed, offset=k, row_index=row_index[flat], backend=backend,
                )
                ids.view(-1)[flat] = tokens
            elif strategy == "posterior":
                prob = float(schedule.unmask_probability(s, t))
                reveal = unmask_decision(masked.reshape(-1), prob, seed=seed, offset=k, row_index=row_index)
                if bool(reveal.any()):
                    logits = den(ids, t=t_rows, rows=reveal.view_as(ids))
                    tokens, _ = sample_absorbing(
                        logits, None, mask_id=mask_id, temperature=temperature, top_k=top_k,
                        top_p=top_p, banned_ids=banned_ids, seed=seed, offset=k,
                        row_index=row_index[reveal], backend=backend,
                    )
                    ids.view(-1)[reveal] = tokens
            else:
                target = torch.round(n_free.double() * (1.0 - float(schedule.alphabar(s)))).long()
                count = (masked.sum(dim=1) - target).clamp(min=0)
                if bool((count > 0).any()):
                    flat = masked.reshape(-1)
                    logits = den(ids, t=t_rows, rows=masked)
                    tokens, conf = sample_absorbing(
                        logits, None, mask_id=mask_id, temperature=temperature, top_k=top_k,
                        top_p=top_p, banned_ids=banned_ids, seed=seed, offset=k,
                        row_index=row_index[flat], backend=backend,
                    )
                    candidates = ids.clone()
                    candidates.view(-1)[flat] = tokens
                    confidence = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
                    confidence.view(-1)[flat] = conf
                    ids = topk_unmask(
                        ids, candidates, confidence, count, mask_id=mask_id,
                        gumbel_temperature=gumbel_temperature, seed=seed, offset=k, backend=backend,
                    )
            bar.update(1)
    finally:
        bar.close()
    if bool((ids == mask_id).any()):  # pragma: no cover - guaranteed by alphabar(0) = 1
        raise RuntimeError("generation ended with [MASK] tokens left; please report this as a bug")
    return ids


def _spindle_reveal_probability(
    schedule: Schedule,
    token_info: torch.Tensor,
    ids: torch.Tensor,
    flat_masked: torch.Tensor,
    logits: torch.Tensor,
    s: float,
    t: float,
    banned_ids: IdsLike,
) -> torch.Tensor:
    """Per-position reveal probability ``[n_masked]`` under the token-level spindle alphabar."""
    info = token_info.to(device=ids.device, dtype=torch.float32)
    if info.dim() != 1 or info.numel() != logits.shape[1]:
        raise ValueError(f"token_info must be [V] = [{logits.shape[1]}], got {tuple(token_info.shape)}")
    if s <= 0:  # the last step reveals everything (the code form's keep probability stops at 0.999)
        return torch.ones(int(flat_masked.sum()), dtype=torch.float32, device=ids.device)
    guess = ids.clone()
    guess.view(-1)[flat_masked] = logits.argmax(dim=1).to(guess.dtype)
    special = torch.as_tensor(list(banned_ids) if banned_ids is not None else [], dtype=torch.int64)
    valid = ~torch.isin(guess, special.to(ids.device))
    guess_info = info[guess]
    batch = ids.shape[0]
    times = torch.tensor([t, s], dtype=torch.float64)
    keep_t = schedule.token_alphabar(times[0].expand(batch), guess_info, valid)
    keep_s = schedule.token_alphabar(times[1].expand(batch), guess_info, valid)
    denom = (1.0 - keep_t).clamp(min=1e-12)
    prob = ((keep_s - keep_t) / denom).clamp(0.0, 1.0)
    return prob.reshape(-1)[flat_masked]


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
