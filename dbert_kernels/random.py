"""Counter-based random numbers shared by every backend.

All randomness in ``dbert_kernels`` comes from Philox4x32-10 (Salmon et al., 2011), the
generator behind Triton's ``tl.philox`` / ``tl.rand``. A draw is a pure function of

* the key: a 64-bit ``seed`` split into (low 32 bits, high 32 bits), exactly as ``tl.philox`` does;
* the counter: four 32-bit words ``(column, row, stream, offset)``.

``stream`` separates the purposes below so that, e.g., the masking draw of a position never
equals its sampling draw; ``offset`` is a user-controlled step counter (the sampler passes the
denoising step). Because the draw depends only on (seed, row, column, stream, offset), the result
of an op does not depend on launch shapes, chunking or which rows are processed together, and the
Triton and native backends reproduce the reference bit for bit.

Two conversions from raw 32-bit words to floats are defined here and mirrored by every backend:

* :func:`uniform_from_bits`: ``((w >> 9) + 0.5) * 2**-23``, a float32 in (0, 1), exact.
* :func:`exponential_from_bits`: an Exp(1) variate built from two words with a 46-bit uniform, so
  that small values keep their relative precision. The Gumbel noise used for sampling is
  ``-log(E)``; it reaches about 32 instead of the ~16.6 of a naive float32 ``-log(-log(u))``, which
  removes the low-temperature tail bias of fp32 Gumbel-max sampling (arXiv 2409.02908).
"""

from __future__ import annotations

import torch

__all__ = [
    "STREAM_MASK",
    "STREAM_SAMPLE",
    "STREAM_UNMASK",
    "STREAM_CONFIDENCE",
    "philox4x32",
    "philox_words",
    "uniform_from_bits",
    "exponential_from_bits",
    "SeedLike",
    "rng_tensor",
    "key_words",
]

#: A seed or offset: a Python int, or a 0-d integer tensor (on any device).
SeedLike = int | torch.Tensor

# Stream ids (third counter word).
STREAM_MASK = 0  # forward-process masking decision of a token
STREAM_SAMPLE = 1  # Gumbel noise of one (row, vocabulary entry) pair when sampling a token
STREAM_UNMASK = 2  # absorbing posterior: is this masked position revealed at this step?
STREAM_CONFIDENCE = 3  # Gumbel noise on the confidence in top-k unmasking

_M32 = 0xFFFFFFFF
_U64 = 1 << 64
_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_N_ROUNDS = 10

# Thresholds of the Exp(1) construction (kept identical in every backend).
EXP_SERIES_CUTOFF = 2.0**-6
ONE_MINUS_ULP = 1.0 - 2.0**-24


def _mul_hi_lo(a: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit halves of ``a * x`` for a constant ``a`` and uint32 values in int64.

    The 64-bit product wraps modulo 2**64 in int64; an arithmetic shift of a wrapped value differs
    from the true high word by exactly 2**32, which the final mask removes.
    """
    prod = x * a
    return (prod >> 32) & _M32, prod & _M32


def philox4x32(
    c0: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    c3: torch.Tensor,
    k0: int | torch.Tensor,
    k1: int | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox4x32-10 on int64 tensors that hold uint32 values (broadcastable shapes).

    Returns the four output words as int64 tensors in [0, 2**32). Matches Random123's known-answer
    vectors and Triton's ``tl.philox``.
    """
    c0, c1, c2, c3 = torch.broadcast_tensors(c0, c1, c2, c3)
    c0, c1, c2, c3 = (c.to(torch.int64) & _M32 for c in (c0, c1, c2, c3))
    k0 = k0 & _M32
    k1 = k1 & _M32
    for _ in range(_N_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    return c0, c1, c2, c3


def philox_words(
    seed: SeedLike,
    column: torch.Tensor | int,
    row: torch.Tensor | int,
    stream: int,
    offset: SeedLike,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four Philox words for counters ``(column, row, stream, offset)`` under ``seed``.

    ``column`` and ``row`` broadcast against each other (int tensors or ints); ``seed`` is an
    integer in ``[0, 2**64)`` or an int64 tensor (see :func:`key_words`), ``offset`` an integer in
    ``[0, 2**32)`` or a 0-d integer tensor.
    """
    column = torch.as_tensor(column, dtype=torch.int64, device=device)
    row = torch.as_tensor(row, dtype=torch.int64, device=column.device)
    zeros = torch.zeros((), dtype=torch.int64, device=column.device)
    if isinstance(offset, torch.Tensor):
        offset = offset.to(device=column.device, dtype=torch.int64)
    if isinstance(seed, torch.Tensor):
        seed = seed.to(device=column.device)
    k0, k1 = key_words(seed)
    return philox4x32(column, row, zeros + stream, zeros + offset, k0, k1)


def uniform_from_bits(word: torch.Tensor) -> torch.Tensor:
    """Uniform float32 in (0, 1) from one uint32 word: ``((w >> 9) + 0.5) * 2**-23`` (exact)."""
    return ((word >> 9).to(torch.float32) + 0.5) * (2.0**-23)


def exponential_from_bits(word_hi: torch.Tensor, word_lo: torch.Tensor) -> torch.Tensor:
    """Exp(1) float32 variate from two uint32 words.

    ``v = (hi >> 9) * 2**-23 + ((lo >> 9) + 0.5) * 2**-46`` is uniform in (0, 1) with 46 bits,
    clamped below 1; then ``E = -log(1 - v)``, evaluated as the series
    ``v (1 + v (1/2 + v (1/3 + v (1/4 + v / 5))))`` for ``v < 2**-6`` so that small ``E`` (the
    large-Gumbel tail) keeps full relative precision.
    """
    a = (word_hi >> 9).to(torch.float32) * (2.0**-23)
    b = ((word_lo >> 9).to(torch.float32) + 0.5) * (2.0**-46)
    v = torch.clamp(a + b, max=ONE_MINUS_ULP)
    series = v * (1.0 + v * (0.5 + v * (1.0 / 3.0 + v * (0.25 + v * 0.2))))
    return torch.where(v < EXP_SERIES_CUTOFF, series, -torch.log(1.0 - v))


def key_words(seed: SeedLike) -> tuple[int | torch.Tensor, int | torch.Tensor]:
    """The Philox key ``(seed low 32 bits, seed high 32 bits)`` of an int or int64-tensor seed.

    A tensor seed is read as the 64-bit pattern of its int64 value (negative values stand for the
    seeds in ``[2**63, 2**64)``), so no host synchronisation is needed.
    """
    if isinstance(seed, torch.Tensor):
        seed = seed.to(torch.int64)
    return seed & _M32, (seed >> 32) & _M32


def rng_tensor(seed: SeedLike, offset: SeedLike, device: torch.device | str) -> torch.Tensor:
    """The ``[2]`` int64 tensor ``(seed bit pattern, offset)`` that the compiled kernels read.

    Python-int seeds in ``[2**63, 2**64)`` are stored as their two's-complement int64 pattern;
    tensor seeds and offsets are used as they are (no host synchronisation).
    """
    if not isinstance(seed, torch.Tensor) and not isinstance(offset, torch.Tensor):
        bits = seed - _U64 if seed >= 1 << 63 else seed
        return torch.tensor([bits, offset], dtype=torch.int64, device=device)
    parts = []
    for value in (seed, offset):
        if isinstance(value, torch.Tensor):
            parts.append(value.to(device=device, dtype=torch.int64).reshape(()))
        else:
            bits = value - _U64 if value >= 1 << 63 else value
            parts.append(torch.tensor(bits, dtype=torch.int64, device=device))
    return torch.stack(parts)
