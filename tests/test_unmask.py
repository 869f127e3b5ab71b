"""Top-k (confidence-based) unmasking (reference path)."""

from __future__ import annotations

import pytest
import torch

from dbert_kernels import topk_unmask

BACKEND = "reference"
MASK = 7


def _case(batch: int, length: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 50, (batch, length), generator=gen)
    ids[torch.rand(batch, length, generator=gen) < 0.6] = MASK
    cand = torch.randint(10, 50, (batch, length), generator=gen)
    conf = torch.rand(batch, length, generator=gen)
    return ids, cand, conf


def test_reveals_exactly_the_k_most_confident_masked_positions():
    ids, cand, conf = _case(16, 37, seed=1)
    k = torch.randint(0, 30, (16,), generator=torch.Generator().manual_seed(2))
    out = topk_unmask(ids, cand, conf, k, mask_id=MASK, backend=BACKEND)
    eligible = ids == MASK
    changed = out != ids
    assert torch.equal(out[~eligible], ids[~eligible])  # unmasked positions never change
    for b in range(16):
        n = min(int(k[b]), int(eligible[b].sum()))
        assert int(changed[b].sum()) == n
        if n:
            chosen_conf = conf[b][changed[b]]
            other_conf = conf[b][eligible[b] & ~changed[b]]
            assert other_conf.numel() == 0 or float(chosen_conf.min()) >= float(other_conf.max())
        assert torch.equal(out[b][changed[b]], cand[b][changed[b]])


def test_ties_go_to_the_lower_position():
    ids = torch.full((1, 8), MASK)
    ids[0, 2] = 11
    conf = torch.tensor([[0.5, 0.9, 0.2, 0.5, 0.5, 0.9, 0.5, 0.1]])
    cand = torch.arange(20, 28)[None, :]
    out = topk_unmask(ids, cand, conf, 3, mask_id=MASK, backend=BACKEND)
    assert (out[0] != ids[0]).nonzero()[:, 0].tolist() == [0, 1, 5]


def test_k_larger_than_masked_count_reveals_all_masked():
    ids, cand, conf = _case(4, 12, seed=3)
    out = topk_unmask(ids, cand, conf, 100, mask_id=MASK, backend=BACKEND)
    assert not bool((out == MASK).any())


def test_gumbel_perturbation_is_seeded_and_diversifies():
    ids = torch.full((64, 20), MASK)
    cand = torch.randint(10, 50, (64, 20))
    conf = torch.linspace(0.2, 0.8, 20).expand(64, -1).contiguous()
    plain = topk_unmask(ids, cand, conf, 5, mask_id=MASK, backend=BACKEND)
    assert bool((plain[:, 15:] != MASK).all()) and bool((plain[:, :15] == MASK).all())
    a = topk_unmask(ids, cand, conf, 5, mask_id=MASK, gumbel_temperature=1.0, seed=3, backend=BACKEND)
    b = topk_unmask(ids, cand, conf, 5, mask_id=MASK, gumbel_temperature=1.0, seed=3, backend=BACKEND)
    c = topk_unmask(ids, cand, conf, 5, mask_id=MASK, gumbel_temperature=1.0, seed=4, backend=BACKEND)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert bool(((a != MASK).sum(1) == 5).all())
    assert bool((a[:, :15] != MASK).any())  # noise lets less confident positions win sometimes
    # higher-confidence positions still win more often
    rate = (a != MASK).float().mean(0)
    assert float(rate[15:].mean()) > float(rate[:5].mean())


def test_bad_inputs_raise():
    ids, cand, conf = _case(2, 6, seed=4)
    with pytest.raises(ValueError, match="shape"):
        topk_unmask(ids, cand[:, :5], conf, 1, mask_id=MASK)
    with pytest.raises(ValueError, match=">= 0"):
        topk_unmask(ids, cand, conf, -1, mask_id=MASK)
    with pytest.raises(ValueError, match=r"\[B\]"):
        topk_unmask(ids, cand, conf, torch.tensor([1, 2, 3]), mask_id=MASK)
    with pytest.raises(TypeError, match="int"):
        topk_unmask(ids, cand, conf, 1.5, mask_id=MASK)
    bad = conf.clone()
    bad[ids == MASK] = float("nan")
    with pytest.raises(ValueError, match="confidence"):
        topk_unmask(ids, cand, bad, 1, mask_id=MASK)
    with pytest.raises(ValueError, match="mask_id"):
        topk_unmask(ids, torch.full_like(cand, MASK), conf, 1, mask_id=MASK)
    with pytest.raises(ValueError, match="gumbel_temperature"):
        topk_unmask(ids, cand, conf, 1, mask_id=MASK, gumbel_temperature=-1.0)
