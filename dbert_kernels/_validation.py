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
_U64 = 2**64
_U32 = 2**32

IdsLike = Sequence[int] | torch.Tensor | None


def check_seed(seed: int) -> int:
    """A seed is a Python int in [0, 2**64)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be a Python int in [0, 2**64), got {type(seed).__name__}")
    if not 0 <= seed < _U64:
        raise ValueError(f"seed must lie in [0, 2**64), got {seed}")
    return seed


def check_offset(offset: int) -> int:
    """An offset (the fourth Philox counter word, e.g. the step) is an int in [0, 2**32)."""
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be a Python int in [0, 2**32), got {type(offset).__name__}")
    if not 0 <= offset < _U32:
        raise ValueError(f"offset must lie in [0, 2**32), got {offset}")
    return offset


def check_int_tensor(x: torch.Tensor, name: str, dims: int | None = None) -> None:
    """``x`` is an integer tensor (of ``dims`` dimensions when given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(x).__name__}")
    if x.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"{name} must hold integer token ids (int64 or int32), got {x.dtype}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(x.shape)}")


def check_ids_in_range(x: torch.Tensor, vocab_size: int, name: str) -> None:
    """Every id lies in [0, vocab_size)."""
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= vocab_size):
        raise ValueError(
            f"{name} holds ids outside [0, {vocab_size}) (min {int(x.min())}, max {int(x.max())}): "
            "check that the tokenizer and the model share one vocabulary"
        )


def check_token_id(value: int | None, vocab_size: int, name: str) -> int:
    """A single token id in [0, vocab_size)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int token id, got {value!r}")
    if not 0 <= value < vocab_size:
        raise ValueError(f"{name}={value} is outside the vocabulary [0, {vocab_size})")
    return value


def vocab_table(ids: IdsLike, vocab_size: int, device: torch.device, name: str) -> torch.Tensor:
    """A ``[vocab_size]`` bool table, True at the given ids (all False for None or empty)."""
    table = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    if ids is None:
        return table
    ids_t = torch.as_tensor(ids, dtype=torch.int64).to(device).reshape(-1)
    if ids_t.numel():
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
    return int(logits.shape[1])


def check_readable_rows(logits: torch.Tensor, rows: torch.Tensor | None, banned: torch.Tensor) -> None:
    """The rows that will be read (``rows``: bool [R], None for all) have no NaN or +inf, and each
    has a finite logit outside ``banned`` ([V] bool)."""
    x = logits if rows is None else logits[rows]
    if x.numel() == 0:
        return
    bad = torch.isnan(x) | (x == float("inf"))
    if bad.any():
        row = int(bad.any(dim=1).nonzero()[0, 0])
        if rows is not None:
            row = int(rows.nonzero()[row, 0])
        raise ValueError(
            f"logits row {row} contains NaN or +inf; only finite values and -inf (a banned "
            "token) are allowed"
        )
    allowed_max = x.float().masked_fill(banned[None, :], float("-inf")).amax(dim=1)
    if bool((allowed_max == float("-inf")).any()):
        raise ValueError("a row has no token with a finite logit outside banned_ids: nothing can be sampled")


def check_row_index(row_index: torch.Tensor | None, n_rows: int, device: torch.device) -> torch.Tensor:
    """Philox row ids ``[n_rows]`` int64 on ``device`` (default ``arange(n_rows)``), non-negative."""
    if row_index is None:
        return torch.arange(n_rows, device=device)
    check_int_tensor(row_index, "row_index", dims=1)
    if row_index.shape[0] != n_rows or (row_index.numel() and int(row_index.min()) < 0):
        raise ValueError(f"row_index must be [{n_rows}] non-negative ints")
    return row_index.to(device=device, dtype=torch.int64)


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


def check_probability(p: float | torch.Tensor, rows: int, device: torch.device, name: str) -> torch.Tensor:
    """A probability (scalar or ``[rows]``) in [0, 1] as a float32 tensor of shape [rows]."""
    p_t = torch.as_tensor(p, dtype=torch.float32).to(device)
    if p_t.dim() == 0:
        p_t = p_t.expand(rows)
    if p_t.shape != (rows,):
        raise ValueError(f"{name} must be a float or a [{rows}] tensor, got shape {tuple(p_t.shape)}")
    if p_t.numel() and (torch.isnan(p_t).any() or (p_t < 0).any() or (p_t > 1).any()):
        raise ValueError(f"{name} must lie in [0, 1]")
    return p_t
