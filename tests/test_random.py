"""Philox4x32-10 and the float conversions shared by every backend."""

from __future__ import annotations

import math

import pytest
import torch

from dbert_kernels.random import (
    exponential_from_bits,
    philox4x32,
    philox_words,
    uniform_from_bits,
)


def _t(v: int) -> torch.Tensor:
    return torch.tensor([v], dtype=torch.int64)


@pytest.mark.parametrize(
    "ctr, key, expected",
    [  # Random123 known-answer vectors for philox4x32-10
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ],
)
def test_philox_known_answers(ctr, key, expected):
    out = philox4x32(*(_t(c) for c in ctr), *key)
    assert tuple(int(w) for w in out) == expected


def test_philox_words_seed_split_and_broadcast():
    seed = (0x12345678 << 32) | 0x9ABCDEF0
    cols = torch.arange(5)[None, :]
    rows = torch.arange(3)[:, None]
    words = philox_words(seed, cols, rows, 2, 7)
    assert all(w.shape == (3, 5) for w in words)
    direct = philox4x32(_t(4), _t(2), _t(2), _t(7), 0x9ABCDEF0, 0x12345678)
    assert [int(w[2, 4]) for w in words] == [int(d) for d in direct]
    # every counter gives a different draw
    assert words[0].unique().numel() == 15


def test_uniform_from_bits_is_exact_and_open():
    w = torch.tensor([0, 511, 512, 0xFFFFFFFF], dtype=torch.int64)
    u = uniform_from_bits(w)
    expected = [0.5 * 2**-23, 0.5 * 2**-23, 1.5 * 2**-23, (2**23 - 0.5) * 2**-23]
    assert u.dtype == torch.float32
    assert u.tolist() == expected
    assert 0 < float(u.min()) and float(u.max()) < 1


def test_uniform_distribution():
    w0, _, _, _ = philox_words(3, torch.arange(200_000), 0, 0, 0)
    u = uniform_from_bits(w0)
    hist = torch.histc(u, bins=20, min=0, max=1)
    expected = 200_000 / 20
    chi2 = float(((hist - expected) ** 2 / expected).sum())
    assert chi2 < 45.3  # chi-square(19) 0.999 quantile


def test_exponential_matches_float64_everywhere_including_the_tail():
    gen = torch.Generator().manual_seed(0)
    hi = torch.randint(0, 2**32, (100_000,), generator=gen, dtype=torch.int64)
    lo = torch.randint(0, 2**32, (100_000,), generator=gen, dtype=torch.int64)
    hi[:2000] = torch.randint(0, 2**12, (2000,), generator=gen)  # v below 2**-20: deep tail
    hi[2000:2100] = 0  # v below 2**-23
    lo[2000:2010] = torch.arange(10) << 9  # v down to 2**-47
    e32 = exponential_from_bits(hi, lo).double()
    v = (hi >> 9).double() * 2.0**-23 + ((lo >> 9).double() + 0.5) * 2.0**-46
    e64 = -torch.log1p(-v)
    upper = v <= 0.5  # E <= log 2: the upper Gumbel tail, where fp32 precision matters
    rel = ((e32 - e64).abs() / e64)[upper].max()
    assert float(rel) < 3e-6
    # lower tail (large E): 1 - v is off by at most one float32 ulp of 1, in probability space
    assert float((torch.exp(-e32) - torch.exp(-e64))[~upper].abs().max()) <= 2.0**-23
    # the tail is reachable: Gumbel = -log E reaches ~32, far beyond naive fp32 (~16.6)
    assert float(-torch.log(e32.min())) > 30


def test_exponential_distribution_ks():
    w0, w1, _, _ = philox_words(11, torch.arange(200_000), 5, 1, 0)
    e = torch.sort(exponential_from_bits(w0, w1).double()).values
    n = e.numel()
    cdf = 1 - torch.exp(-e)
    emp = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = float(torch.maximum((emp - cdf).abs(), (emp - 1 / n - cdf).abs()).max())
    assert ks < 1.95 / math.sqrt(n)  # KS critical value at alpha = 0.001
    assert abs(float(e.mean()) - 1) < 0.01
