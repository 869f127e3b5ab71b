"""Input checks shared by the public ops of every backend.

Every check raises ``ValueError`` or ``TypeError`` with a message that names the argument and
says what to pass instead; none of them uses ``assert``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: bert-base-uncased special ids: [PAD]=0, [CLS]=101, [SEP]=102, [MASK]=103.
BERT_UNCASED_SPECIAL_IDS: tuple[int, ...] = (0, 101, 102, 103)

LOGIT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Integer dtypes accepted for token ids (ids written into them must fit, see check_fits_dtype).
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
#: row_index values are the second Philox counter word: they must lie in [0, 2**32).
ROW_INDEX_LIMIT = 2**32

IdsLike = Sequence[int] | torch.Tensor | None


def _is_int_scalar_tensor(x: object) -> bool:
    return isinstance(x, torch.Tensor) and x.dim() == 0 and x.dtype in INT_DTYPES


def _check_counter_word(value: int | torch.Tensor, name: str, bits: int, check_tensor_value: bool) -> int | torch.Tensor:
    """``value`` is an int in [0, 2**bits) or a 0-d integer tensor (whose value is checked only when
    ``check_tensor_value``: a host synchronisation)."""
    bound = f"[0, 2**{bits})"
    if isinstance(value, torch.Tensor):
        if not _is_int_scalar_tensor(value):
            raise TypeError(
                f"a tensor {name} must be a 0-d integer tensor, got {value.dtype} of shape {tuple(value.shape)}"
            )
        if check_tensor_value and value.device.type != "meta" and not 0 <= int(value) < 1 << bits:
            raise ValueError(f"{name} must lie in {bound}, got {int(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a Python int in {bound} or a 0-d integer tensor, got {type(value).__name__}")
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{name} must lie in {bound}, got {value}")
    return value


def check_seed(seed: int | torch.Tensor) -> int | torch.Tensor:
    """A seed is a Python int in [0, 2**64), or a 0-d integer tensor on any device (read as the
    64-bit pattern of its int64 value, so it needs no range check and no host synchronisation)."""
    return _check_counter_word(seed, "seed", 64, check_tensor_value=False)


def check_offset(offset: int | torch.Tensor, validate: bool = True) -> int | torch.Tensor:
    """An offset (the fourth Philox counter word, e.g. the step) is an int in [0, 2**32), or a 0-d
    integer tensor whose value is checked only when ``validate`` (a host synchronisation)."""
    return _check_counter_word(offset, "offset", 32, check_tensor_value=validate)


def check_not_meta(x: torch.Tensor, name: str) -> None:
    """``x`` holds data (meta tensors have only a shape: the ops need values)."""
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (no data): pass a CPU or CUDA tensor")


def check_int_tensor(x: torch.Tensor, name: str, dims: int | None = None) -> None:
    """``x`` is an integer tensor (of ``dims`` dimensions when given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(x).__name__}")
    if x.dtype not in INT_DTYPES:
        raise TypeError(f"{name} must hold integer token ids (int64, int32, int16, int8 or uint8), got {x.dtype}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(x.shape)}")
    check_not_meta(x, name)


def check_fits_dtype(value: int, dtype: torch.dtype, name: str) -> None:
    """``value`` (an id that will be written into a tensor of ``dtype``) is representable there."""
    info = torch.iinfo(dtype)
    if not info.min <= value <= info.max:
        raise ValueError(f"{name}={value} does not fit the ids' dtype {dtype} (range [{info.min}, {info.max}])")


def check_ids_in_range(x: torch.Tensor, vocab_size: int, name: str) -> None:
    """Every id lies in [0, vocab_size)."""
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab_size):
        raise ValueError(
            f"{name} holds ids outside [0, {vocab_size}) (min {int(x.min())}, max {int(x.max())}): "
            "check that the tokenizer and the model share one vocabulary"
        )


def check_token_id(value: int | None, vocab_size: int | None, name: str) -> int:
    """A single token id in [0, vocab_size) (``vocab_size`` None, not known yet: >= 0)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int token id, got {value!r}")
    if value < 0 or (vocab_size is not None and value >= vocab_size):
        raise ValueError(f"{name}={value} is outside the vocabulary [0, {vocab_size or 'V'})")
    return value


def vocab_table(
    ids: IdsLike, vocab_size: int, device: torch.device, name: str, validate: bool = True
) -> torch.Tensor:
    """A ``[vocab_size]`` bool table: True at the given ids (all False for None or empty).

    ``ids`` is a sequence or tensor of integer ids, or a ``[vocab_size]`` bool mask (used as it
    is). Float or other non-integer ids are rejected; with ``validate`` the ids are checked to lie
    in ``[0, vocab_size)`` (a host synchronisation for tensors).
    """
    table = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    if ids is None:
        return table
    ids_t = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(list(ids) if not isinstance(ids, Sequence) else ids)
    if ids_t.dtype == torch.bool:
        if ids_t.shape != (vocab_size,):
            raise ValueError(
                f"{name} given as a bool mask must have shape [V] = [{vocab_size}], got {tuple(ids_t.shape)}"
            )
        return ids_t.to(device)
    if ids_t.numel() and ids_t.dtype not in INT_DTYPES:
        raise TypeError(f"{name} must be integer token ids or a [V] bool mask, got {ids_t.dtype} values")
    ids_t = ids_t.to(device=device, dtype=torch.int64).reshape(-1)
    if ids_t.numel():
        if validate:
            check_ids_in_range(ids_t, vocab_size, name)
        table[ids_t] = True
    return table


def default_banned(banned_ids: IdsLike, vocab_size: int) -> IdsLike:
    """Resolve the default banned set (bert-base-uncased's specials) for a vocabulary size."""
    if banned_ids is not None:
        return banned_ids
    if vocab_size <= max(BERT_UNCASED_SPECIAL_IDS):
        raise ValueError(
            f"the default banned ids {BERT_UNCASED_SPECIAL_IDS} (bert-base-uncased's [PAD], [CLS], "
            f"[SEP], [MASK]) do not fit a vocabulary of {vocab_size}: pass banned_ids explicitly "
            "(use [] to ban nothing)"
        )
    return BERT_UNCASED_SPECIAL_IDS


def check_logits(logits: torch.Tensor) -> int:
    """``logits`` is a 2-D float tensor [rows, V] of a supported dtype; returns V."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in LOGIT_DTYPES:
        raise TypeError(f"logits must be float32, float16 or bfloat16, got {logits.dtype}")
    if logits.dim() != 2:
        raise ValueError(
            f"logits must be 2-D [rows, vocab]; got shape {tuple(logits.shape)} "
            "(flatten [batch, length, vocab] with logits.reshape(-1, vocab))"
        )
    if logits.shape[1] < 1:
        raise ValueError("logits have an empty vocabulary dimension")
    check_not_meta(logits, "logits")
    return int(logits.shape[1])


def check_readable_rows(logits: torch.Tensor, rows: torch.Tensor | None, banned: torch.Tensor) -> None:
    """The rows that will be read (``rows``: bool [R], None for all) have no NaN or +inf at an
    allowed id (banned ids are never read), and each has a finite logit outside ``banned``."""
    x = logits if rows is None else logits[rows]
    if x.numel() == 0:
        return
    allowed = ~banned[None, :]
    bad = (torch.isnan(x) | (x == float("inf"))) & allowed
    if bad.any():
        row = int(bad.any(dim=1).nonzero()[0, 0])
        if rows is not None:
            row = int(rows.nonzero()[row, 0])
        raise ValueError(
            f"logits row {row} contains NaN or +inf at an allowed id; only finite values and -inf "
            "(a token that cannot be drawn) are allowed"
        )
    allowed_max = x.float().masked_fill(banned[None, :], float("-inf")).amax(dim=1)
    if bool((allowed_max == float("-inf")).any()):
        raise ValueError("a row has no token with a finite logit outside banned_ids: nothing can be sampled")


def check_row_index(
    row_index: torch.Tensor | None, n_rows: int, device: torch.device, validate: bool = True
) -> torch.Tensor:
    """Philox row ids ``[n_rows]`` int64 on ``device`` (default ``arange(n_rows)``), each in
    ``[0, 2**32)`` (checked when ``validate``: a host synchronisation)."""
    if row_index is None:
        return torch.arange(n_rows, device=device)
    check_int_tensor(row_index, "row_index", dims=1)
    if row_index.shape[0] != n_rows:
        raise ValueError(f"row_index must be [{n_rows}] ints in [0, 2**32), got shape {tuple(row_index.shape)}")
    row_index = row_index.to(device=device, dtype=torch.int64)
    if validate and row_index.numel() and (int(row_index.min()) < 0 or int(row_index.max()) >= ROW_INDEX_LIMIT):
        raise ValueError(
            f"row_index values must lie in [0, 2**32) (they are a 32-bit Philox counter word), got "
            f"min {int(row_index.min())}, max {int(row_index.max())}"
        )
    return row_index


def check_sampling_params(
    temperature: float, top_k: int | None, top_p: float | None, vocab_size: int
) -> None:
    """temperature >= 0 and finite, 1 <= top_k <= V, 0 < top_p <= 1."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a float, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be finite and >= 0 (0 means greedy), got {temperature}")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise TypeError(f"top_k must be an int or None, got {type(top_k).__name__}")
        if not 1 <= top_k <= vocab_size:
            raise ValueError(f"top_k must lie in [1, V] = [1, {vocab_size}] (None disables it), got {top_k}")
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)):
            raise TypeError(f"top_p must be a float or None, got {type(top_p).__name__}")
        if not (0.0 < top_p <= 1.0):
            raise ValueError(f"top_p must lie in (0, 1] (None disables it), got {top_p}")


def check_probability(
    p: float | torch.Tensor, rows: int, device: torch.device, name: str, validate: bool = True
) -> torch.Tensor:
    """A probability (scalar or ``[rows]``) in [0, 1] as a float32 tensor of shape [rows] (the
    values are checked when ``validate``: a host synchronisation for tensors)."""
    p_t = torch.as_tensor(p, dtype=torch.float32).to(device)
    if p_t.dim() == 0:
        p_t = p_t.expand(rows)
    if p_t.shape != (rows,):
        raise ValueError(f"{name} must be a float or a [{rows}] tensor, got shape {tuple(p_t.shape)}")
    if validate and p_t.numel() and (torch.isnan(p_t).any() or (p_t < 0).any() or (p_t > 1).any()):
        raise ValueError(f"{name} must lie in [0, 1]")
    return p_t
