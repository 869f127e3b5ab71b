"""Forward-process masking (reference path)."""

from __future__ import annotations

import pytest
import torch

from dbert_kernels import Schedule, spindle_mask, token_information
from dbert_kernels.reference import keep_probability

BACKEND = "reference"
V, MASK, PAD, CLS, SEP = 300, 3, 0, 1, 2


def _batch(batch: int, length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (batch, length), generator=gen)
    ids[:, 0] = CLS
    ids[:, -1] = SEP
    ids[-1, -5:] = PAD
    return ids


def _info(form: str = "code") -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return token_information(torch.randint(0, 5_000, (V,), generator=gen) ** 2, form)


@pytest.mark.parametrize(
    "schedule",
    [Schedule.d3pm(T=100), Schedule.cosine(T=100), Schedule.spindle(T=100), Schedule.spindle(0.5, "paper", T=100)],
    ids=["d3pm", "cosine", "spindle-code", "spindle-paper"],
)
def test_masking_rate_matches_keep_probability(schedule):
    ids = _batch(64, 97, seed=1)
    t = torch.linspace(5, 95, 64)
    form = schedule.spindle_form if schedule.is_spindle else "code"
    info = _info(form)
    kw = dict(token_info=info) if schedule.is_spindle else dict(vocab_size=V)
    noised, masked = spindle_mask(ids, t, schedule, mask_id=MASK, protected_ids=[PAD, CLS, SEP], seed=5, backend=BACKEND, **kw)
    protected = torch.zeros(V, dtype=torch.bool)
    protected[[PAD, CLS, SEP]] = True
    base = schedule.alphabar(t.double()).float()
    amp = schedule.spindle_amplitude(t.double()).float()
    keep = keep_probability(ids, base, amp, info, protected, form if schedule.is_spindle else "none")
    p_mask = 1 - keep
    # total masked count vs its expectation (sum of Bernoulli variances)
    expected, var = float(p_mask.sum()), float((p_mask * keep).sum())
    assert abs(float(masked.sum()) - expected) < 4 * var**0.5
    # and per time bucket
    for rows in torch.arange(64).chunk(4):
        e, v = float(p_mask[rows].sum()), float((p_mask[rows] * keep[rows]).sum())
        assert abs(float(masked[rows].sum()) - e) < 4.5 * v**0.5
    assert torch.equal(noised, torch.where(masked, torch.full_like(ids, MASK), ids))
    assert not bool(masked[protected[ids]].any())


def test_endpoints_mask_nothing_and_everything():
    ids = _batch(4, 20, seed=2)
    _, none = spindle_mask(ids, 0.0, Schedule.d3pm(100), vocab_size=V, mask_id=MASK, protected_ids=[PAD, CLS, SEP])
    _, all_ = spindle_mask(ids, 100.0, Schedule.d3pm(100), vocab_size=V, mask_id=MASK, protected_ids=[PAD, CLS, SEP])
    assert not bool(none.any())
    assert torch.equal(all_, ~torch.isin(ids, torch.tensor([PAD, CLS, SEP])))


def test_spindle_masks_rare_tokens_first():
    counts = torch.ones(V)
    counts[4:150] = 10_000  # frequent
    info = token_information(counts, "code")
    gen = torch.Generator().manual_seed(3)
    ids = torch.cat([torch.randint(4, 150, (200, 20), generator=gen), torch.randint(150, V, (200, 20), generator=gen)], 1)
    _, masked = spindle_mask(ids, 50.0, Schedule.spindle(0.5, T=100), info, mask_id=MASK, seed=1)
    rare_rate = float(masked[:, 20:].float().mean())
    frequent_rate = float(masked[:, :20].float().mean())
    assert rare_rate > frequent_rate + 0.3  # lambda sin(pi/2) = 0.5 on a +-0.5 centred weight


def test_reproducible_and_seed_dependent():
    ids = _batch(8, 50, seed=4)
    args = (ids, 50.0, Schedule.d3pm(100))
    kw = dict(vocab_size=V, mask_id=MASK)
    a = spindle_mask(*args, seed=9, **kw)[1]
    assert torch.equal(a, spindle_mask(*args, seed=9, **kw)[1])
    assert not torch.equal(a, spindle_mask(*args, seed=10, **kw)[1])
    assert not torch.equal(a, spindle_mask(*args, seed=9, offset=1, **kw)[1])
    # rows are keyed by their index: a row's mask does not depend on the rest of the batch
    assert torch.equal(spindle_mask(ids[:3], 50.0, Schedule.d3pm(100), seed=9, **kw)[1], a[:3])


def test_int32_ids_keep_their_dtype():
    ids = _batch(2, 10, seed=5).to(torch.int32)
    noised, masked = spindle_mask(ids, 60.0, Schedule.d3pm(100), vocab_size=V, mask_id=MASK)
    assert noised.dtype == torch.int32 and masked.dtype == torch.bool


def test_bad_inputs_raise():
    ids = _batch(2, 10, seed=6)
    sched = Schedule.d3pm(100)
    with pytest.raises(ValueError, match="token_info"):
        spindle_mask(ids, 1.0, Schedule.spindle(), mask_id=MASK)
    with pytest.raises(ValueError, match="outside"):
        spindle_mask(ids + V, 1.0, sched, vocab_size=V, mask_id=MASK)
    with pytest.raises(TypeError, match="integer"):
        spindle_mask(ids.float(), 1.0, sched, vocab_size=V, mask_id=MASK)
    with pytest.raises(ValueError, match="2 dimensions"):
        spindle_mask(ids[0], 1.0, sched, vocab_size=V, mask_id=MASK)
    with pytest.raises(ValueError, match=r"\[0, T\]"):
        spindle_mask(ids, 101.0, sched, vocab_size=V, mask_id=MASK)
    with pytest.raises(ValueError, match=r"\[B\]"):
        spindle_mask(ids, torch.ones(3), sched, vocab_size=V, mask_id=MASK)
    with pytest.raises(ValueError, match="mask_id"):
        spindle_mask(ids, 1.0, sched, vocab_size=V, mask_id=V)
    with pytest.raises(ValueError, match="vocab_size"):
        spindle_mask(ids, 1.0, sched, mask_id=MASK)
    with pytest.raises(ValueError, match="protected_ids"):
        spindle_mask(ids, 1.0, sched, vocab_size=V, mask_id=MASK, protected_ids=[V + 1])
    with pytest.raises(ValueError, match="finite"):
        spindle_mask(ids, 1.0, Schedule.spindle(), torch.full((V,), float("nan")), mask_id=MASK)
