"""Noise schedules and token information."""

from __future__ import annotations

import math

import pytest
import torch

from dbert_kernels import Schedule, token_information

SCHEDULES = [
    Schedule.d3pm(T=100),
    Schedule.cosine(T=100),
    Schedule.spindle(lam=0.3, T=100),
    Schedule.spindle(lam=0.5, form="paper", T=100),
]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: f"{s.base}-{s.spindle_lambda}-{s.spindle_form}")
def test_alphabar_endpoints_and_monotone(schedule):
    t = torch.linspace(0, schedule.T, 1001, dtype=torch.float64)
    ab = schedule.alphabar(t)
    assert float(ab[0]) == 1.0 and float(ab[-1]) == 0.0
    assert bool((ab[1:] <= ab[:-1]).all())
    assert bool(((ab >= 0) & (ab <= 1)).all())


def test_linear_and_cosine_values():
    t = torch.tensor([0.0, 25.0, 50.0, 100.0], dtype=torch.float64)
    assert torch.allclose(Schedule.d3pm(100).alphabar(t), 1 - t / 100)
    assert torch.allclose(Schedule.cosine(100).alphabar(t), torch.cos(t / 100 * math.pi / 2) ** 2, atol=1e-12)


def test_unmask_probability():
    s = Schedule.d3pm(T=10)
    assert float(s.unmask_probability(0.0, 5.0)) == 1.0
    assert math.isclose(float(s.unmask_probability(8.0, 10.0)), 0.2, rel_tol=1e-12)
    # (ab_s - ab_t) / (1 - ab_t) with ab = 1 - t/T: (0.5 - 0.4) / 0.6
    assert math.isclose(float(s.unmask_probability(5.0, 6.0)), 0.1 / 0.6, rel_tol=1e-12)
    assert float(s.unmask_probability(0.0, 0.0)) == 1.0
    with pytest.raises(ValueError, match="s <= t"):
        s.unmask_probability(6.0, 5.0)


@pytest.mark.parametrize("bad", [-0.1, 100.5, float("nan")])
def test_time_outside_range_raises(bad):
    with pytest.raises(ValueError, match=r"\[0, T\]"):
        Schedule.d3pm(T=100).alphabar(torch.tensor([bad]))


@pytest.mark.parametrize(
    "kwargs", [dict(T=0), dict(T=float("inf")), dict(base="exp"), dict(spindle_lambda=-1), dict(spindle_form="x")]
)
def test_bad_schedule_raises(kwargs):
    with pytest.raises(ValueError):
        Schedule(**kwargs)


def _random_info(form: str, batch: int = 6, length: int = 20, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 10_000, (500,), generator=gen)
    info_table = token_information(counts, form)
    ids = torch.randint(0, 500, (batch, length), generator=gen)
    return info_table[ids], torch.ones(batch, length, dtype=torch.bool)


def test_code_form_sentence_mean_equals_alphabar():
    sched = Schedule.spindle(lam=0.3, T=100)
    info, valid = _random_info("code")
    t = torch.tensor([10.0, 30.0, 50.0, 60.0, 80.0, 95.0])
    keep = sched.token_alphabar(t, info, valid)
    base = sched.alphabar(t).float()
    unclipped = (keep > 0).all(dim=1) & (keep < 0.999).all(dim=1)
    assert bool(unclipped.any())
    assert torch.allclose(keep.mean(dim=1)[unclipped], base[unclipped], atol=1e-6)


def test_paper_form_mean_is_exact_for_equal_information_and_above_otherwise():
    sched = Schedule.spindle(lam=0.3, form="paper", T=100)
    t = torch.tensor([20.0, 50.0, 70.0])
    base = sched.alphabar(t).float()
    equal = torch.full((3, 10), 4.2)
    valid = torch.ones(3, 10, dtype=torch.bool)
    assert torch.allclose(sched.token_alphabar(t, equal, valid).mean(dim=1), base, atol=1e-6)
    # AM-HM: with unequal information the paper form's sentence mean is >= 1 - t/T
    info, valid = _random_info("paper", batch=3)
    keep = sched.token_alphabar(t, info, valid)
    assert bool((keep.mean(dim=1) >= base - 1e-6).all())


@pytest.mark.parametrize("form", ["code", "paper"])
def test_rare_tokens_are_masked_first(form):
    counts = torch.tensor([100_000, 10, 50_000, 3, 7_000])
    table = token_information(counts, form)
    sched = Schedule.spindle(lam=0.3, form=form, T=100)
    ids = torch.tensor([[0, 1, 2, 3, 4]])
    keep = sched.token_alphabar(torch.tensor([40.0]), table[ids], torch.ones(1, 5, dtype=torch.bool))[0]
    order = torch.argsort(counts)  # rare first
    assert bool((keep[order][1:] >= keep[order][:-1]).all())
    assert float(keep[3]) < float(sched.alphabar(40.0)) < float(keep[0])


def test_invalid_positions_are_kept_and_excluded_from_mean():
    sched = Schedule.spindle(lam=0.3, T=100)
    info = torch.tensor([[0.9, 0.1, 0.5, 0.0]])
    valid = torch.tensor([[True, True, True, False]])
    keep = sched.token_alphabar(torch.tensor([50.0]), info, valid)
    assert float(keep[0, 3]) == 1.0
    assert math.isclose(float(keep[0, :3].mean()), 0.5, abs_tol=1e-6)


def test_token_information_forms():
    counts = torch.tensor([0, 1, 10, 100])
    w = token_information(counts, "code")
    assert float(w.max()) == 1.0 and float(w[0]) == 0.0
    assert bool((w[1:] > w[:-1]).all())
    h = token_information(counts, "paper")
    assert bool((h > 0).all()) and bool((h[1:] < h[:-1]).all())
    freq = (counts + 1.0) / (counts.sum() + 4)
    assert torch.allclose(h, -torch.log(freq).float())
    for bad in (torch.tensor([-1, 2]), torch.zeros(0), torch.zeros(3)):
        with pytest.raises(ValueError):
            token_information(bad, "code")
    with pytest.raises(ValueError):
        token_information(counts, "other")
