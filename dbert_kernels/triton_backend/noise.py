"""Triton twins of :mod:`dbert_kernels.random` and small jit helpers shared by the kernels.

Every function here mirrors its PyTorch counterpart operation for operation (same float32
constants, same order, no fused multiply-add: the launchers pass ``enable_fp_fusion=False``), so
the kernels consume exactly the Philox draws of the reference backend.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .. import random as rnd

TWO_M23 = tl.constexpr(2.0**-23)
TWO_M46 = tl.constexpr(2.0**-46)
EXP_SERIES_CUTOFF = tl.constexpr(rnd.EXP_SERIES_CUTOFF)
ONE_MINUS_ULP = tl.constexpr(rnd.ONE_MINUS_ULP)
INT32_MIN = tl.constexpr(-2147483648)
INT32_MAX = tl.constexpr(2147483647)
#: Bound on the threshold searches' iterations: a safety net above the 32 that valid rows need.
MAX_SEARCH_STEPS = tl.constexpr(40)


@triton.jit
def philox_block(seed, column, row, stream: tl.constexpr, offset):
    """The four uint32 Philox words for counters ``(column, row, stream, offset)``.

    ``seed`` is the 64-bit key as an int64 bit pattern; ``column``/``row`` are int tensors or
    scalars that broadcast against each other (reduced modulo 2**32 like the reference),
    ``offset`` an int scalar.
    """
    c0 = (column.to(tl.int64) & 0xFFFFFFFF).to(tl.uint32)
    c1 = (row.to(tl.int64) & 0xFFFFFFFF).to(tl.uint32)
    zero = c0 * 0 + c1 * 0  # the broadcast shape of column and row
    c0 = c0 + zero
    c1 = c1 + zero
    c2 = zero + stream
    c3 = zero + (offset.to(tl.int64) & 0xFFFFFFFF).to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3)


@triton.jit
def uniform_from_bits(word):
    """Uniform float32 in (0, 1): ``((w >> 9) + 0.5) * 2**-23`` of a uint32 word (exact)."""
    return ((word >> 9).to(tl.float32) + 0.5) * TWO_M23


@triton.jit
def exponential_from_bits(word_hi, word_lo):
    """Exp(1) float32 variate from two uint32 words (see ``random.exponential_from_bits``)."""
    a = (word_hi >> 9).to(tl.float32) * TWO_M23
    b = ((word_lo >> 9).to(tl.float32) + 0.5) * TWO_M46
    v = tl.minimum(a + b, ONE_MINUS_ULP)
    series = v * (1.0 + v * (0.5 + v * (0.3333333333333333 + v * (0.25 + v * 0.2))))
    return tl.where(v < EXP_SERIES_CUTOFF, series, -tl.log(1.0 - v))


@triton.jit
def float_key(x):
    """Order-preserving int32 key of float32 ``x`` (``-0.0`` maps like ``+0.0``).

    ``a < b`` (as floats, no NaN) iff ``float_key(a) < float_key(b)``, and equal floats give equal
    keys, so thresholds on values can be searched by bisection over integers.
    """
    bits = tl.where(x == 0.0, 0.0, x).to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def exp_weight(s):
    """The softmax weight ``exp(s)`` of float32 ``s <= 0`` (``-inf`` allowed), bit for bit the
    float32 sequence of ``dbert_kernels.reference.exp_weight`` (Cephes' ``expf``; no fused
    multiply-add); ``s < -87`` gives 0."""
    under = s < -87.0
    t = tl.where(under, -87.0, s)
    n = (t * 1.44269504088896341 + 12582912.0) - 12582912.0
    r = t - n * 0.693359375
    r = r - n * -2.12194440e-4
    r2 = r * r
    y = r * 1.9875691500e-4 + 1.3981999507e-3
    y = y * r + 8.3334519073e-3
    y = y * r + 4.1665795894e-2
    y = y * r + 1.6666665459e-1
    y = y * r + 5.0000001201e-1
    y = y * r2 + r + 1.0
    scale = ((n.to(tl.int32) + 127) << 23).to(tl.float32, bitcast=True)
    return tl.where(under, 0.0, y * scale)
