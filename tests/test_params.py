"""SamplingParams, and the entropy / margin outputs of the public sampling ops.

Entropy and margin are exact-vs-reference on the native backend (fused into its one pass) and
checked by hand on tiny inputs; the rows that are not read follow the documented values.
"""

from __future__ import annotations

import math

import pytest
import torch

import dbert_kernels as dk
from dbert_kernels.params import SamplingParams

from .backends_under_test import require_backend
from .stats import entropy_of, filtered_distribution

CPU_BACKENDS = ["reference", pytest.param("native", marks=pytest.mark.native)]
ALL_BACKENDS = CPU_BACKENDS + [pytest.param("triton", marks=pytest.mark.interpreter)]


def _need(backend: str) -> None:
    if backend == "triton":
        pytest.importorskip("triton")
    require_backend(backend)


def _params(**kw) -> SamplingParams:
    return SamplingParams.create(banned=torch.zeros(4, dtype=torch.bool), **kw)


def test_params_resolve_off_values_and_temperature_once():
    p = _params(temperature=0.7, top_k=None, top_p=None)
    assert (p.greedy, p.top_k, p.top_p) == (False, 0, 1.0)
    assert p.inv_temperature == float(torch.tensor(1 / 0.7, dtype=torch.float32))
    g = _params(temperature=0.0, top_k=3, top_p=0.5)
    assert (g.greedy, g.inv_temperature, g.top_k, g.top_p) == (True, 1.0, 3, 0.5)
    # 1/T overflows float32 (1e39 > 3.4e38): greedy, by the one rule in the constructor
    assert _params(temperature=1e-39, top_k=None, top_p=None).greedy
    assert _params(temperature=1e-39, top_k=None, top_p=None).inv_temperature == 1.0
    assert not _params(temperature=1e-38, top_k=None, top_p=None).greedy
    with pytest.raises(AttributeError):
        p.top_k = 3  # frozen


def _hand(probs: list[float]) -> tuple[float, float]:
    entropy = -sum(p * math.log(p) for p in probs if p > 0)
    top = sorted(probs, reverse=True) + [0.0]
    return entropy, top[0] - top[1]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize(
    "kw, probs",
    [
        (dict(), [0.5, 0.25, 0.125, 0.125]),
        (dict(temperature=0.0), [0.5, 0.25, 0.125, 0.125]),  # greedy: at temperature 1
        (dict(top_k=2), [2 / 3, 1 / 3]),
        (dict(top_p=0.5), [1.0]),  # mass above id 1 is 0.5, not < 0.5: one token kept
        (dict(top_p=0.6), [2 / 3, 1 / 3]),
        (dict(temperature=0.5), [16 / 22, 4 / 22, 1 / 22, 1 / 22]),
    ],
)
def test_entropy_and_margin_by_hand(backend, kw, probs):
    _need(backend)
    x = torch.tensor([[math.log(4), math.log(2), 0.0, 0.0, 9.0]])  # id 4 banned
    tok, conf, ent, margin = dk.sample(
        x, banned_ids=[4], seed=1, return_entropy=True, return_margin=True, backend=backend, **kw
    )
    want_ent, want_margin = _hand(probs)
    assert ent.dtype == margin.dtype == torch.float32
    assert float(ent[0]) == pytest.approx(want_ent, rel=1e-6, abs=1e-6)
    assert float(margin[0]) == pytest.approx(want_margin, rel=1e-6)
    assert float(conf[0]) == pytest.approx(probs[int(tok[0])], rel=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_return_flags_shape_the_tuple(backend):
    require_backend(backend)
    x = torch.randn(3, 50)
    assert len(dk.sample(x, banned_ids=[], backend=backend)) == 2
    assert len(dk.sample(x, banned_ids=[], return_entropy=True, backend=backend)) == 3
    _, _, margin = dk.sample(x, banned_ids=[], return_margin=True, backend=backend)
    assert bool(((margin >= 0) & (margin <= 1)).all())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_rows_not_read_get_the_documented_entropy_and_margin(backend):
    _need(backend)
    ids = torch.tensor([7, 3, 3, 9])
    x = torch.randn(4, 20)
    prob = torch.tensor([1.0, 0.0, 1.0, 1.0])
    tok, conf, ent, margin = dk.sample_absorbing(
        x, ids, mask_id=3, unmask_prob=prob, banned_ids=[], return_entropy=True, return_margin=True,
        backend=backend,
    )
    assert tok[[0, 1, 3]].tolist() == [7, 3, 9]
    assert conf[[0, 1, 3]].tolist() == [1.0, 0.0, 1.0]
    assert ent[[0, 3]].tolist() == [0.0, 0.0] and margin[[0, 3]].tolist() == [1.0, 1.0]
    assert math.isnan(float(ent[1])) and math.isnan(float(margin[1]))
    assert float(ent[2]) > 0 and 0 <= float(margin[2]) <= 1


@pytest.mark.native
@pytest.mark.parametrize("vocab, rows", [(1, 3), (17, 5), (301, 13), (1003, 41), (4099, 7)])
@pytest.mark.parametrize(
    "kw",
    [dict(), dict(temperature=0.0), dict(temperature=0.6, top_k=7), dict(temperature=1.4, top_p=0.85),
     dict(temperature=0.9, top_k=40, top_p=0.7), dict(temperature=0.05)],
)
def test_native_entropy_margin_equal_reference(vocab, rows, kw):
    require_backend("native")
    g = torch.Generator().manual_seed(vocab * 7 + rows)
    x = torch.randn(rows, vocab, generator=g) * 3
    x[0, : vocab // 2] = x[0, 0]  # ties
    kw = {k: v for k, v in kw.items() if k != "top_k" or v <= vocab}
    args = dict(banned_ids=[], seed=11, offset=2, return_entropy=True, return_margin=True, **kw)
    ref = dk.sample(x, backend="reference", **args)
    nat = dk.sample(x, backend="native", **args)
    assert torch.equal(ref[0], nat[0])
    for a, b in zip(ref[1:], nat[1:], strict=True):
        torch.testing.assert_close(b, a, rtol=2e-7, atol=2e-7)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_entropy_matches_float64_filtered_distribution(backend):
    require_backend(backend)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(19, 517, generator=g) * 2
    banned = torch.zeros(517, dtype=torch.bool)
    banned[:4] = True
    for temperature, top_k, top_p in [(0.9, None, None), (1.2, 30, 0.85)]:
        _, _, ent, margin = dk.sample(
            x, temperature=temperature, top_k=top_k, top_p=top_p, banned_ids=banned, seed=5,
            return_entropy=True, return_margin=True, backend=backend,
        )
        p = filtered_distribution(x, banned, temperature, top_k, top_p)
        torch.testing.assert_close(ent.double(), entropy_of(p), rtol=1e-5, atol=1e-6)
        top2 = torch.topk(p, 2, dim=1).values
        torch.testing.assert_close(margin.double(), top2[:, 0] - top2[:, 1], rtol=1e-5, atol=1e-6)
