"""Every bad input to the sampling ops gets a clear exception naming the problem."""

from __future__ import annotations

import pytest
import torch

from dbert_kernels import sample, sample_absorbing
from dbert_kernels.backends import resolve_backend

V = 200


def _logits(rows: int = 4) -> torch.Tensor:
    return torch.randn(rows, V)


@pytest.mark.parametrize(
    "logits, kwargs, exc, match",
    [
        (torch.randn(4, V).double(), {}, TypeError, "float32"),
        (torch.randint(0, 5, (4, V)), {}, TypeError, "float32"),
        (torch.randn(2, 3, V), {}, ValueError, "2-D"),
        (torch.randn(4, V), dict(temperature=-0.5), ValueError, "temperature"),
        (torch.randn(4, V), dict(temperature=float("nan")), ValueError, "temperature"),
        (torch.randn(4, V), dict(top_k=0), ValueError, "top_k"),
        (torch.randn(4, V), dict(top_k=V + 1), ValueError, "top_k"),
        (torch.randn(4, V), dict(top_k=2.5), TypeError, "top_k"),
        (torch.randn(4, V), dict(top_p=0.0), ValueError, "top_p"),
        (torch.randn(4, V), dict(top_p=1.01), ValueError, "top_p"),
        (torch.randn(4, V), dict(banned_ids=[V]), ValueError, "outside"),
        (torch.randn(4, V), dict(banned_ids=list(range(V))), ValueError, "banned"),
        (torch.randn(4, V), dict(seed=-1), ValueError, "seed"),
        (torch.randn(4, V), dict(seed=1.5), TypeError, "seed"),
        (torch.randn(4, V), dict(offset=2**32), ValueError, "offset"),
        (torch.randn(4, V), dict(row_index=torch.arange(3)), ValueError, "row_index"),
        (torch.randn(4, V), dict(backend="cuda-magic"), ValueError, "backend"),
        (torch.randn(4, 50), {}, ValueError, "banned_ids explicitly"),
    ],
)
def test_bad_sampling_arguments(logits, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sample(logits, **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_logits_raise_with_the_row(bad):
    logits = _logits(5)
    logits[3, 17] = bad
    with pytest.raises(ValueError, match="row 3"):
        sample(logits)


def test_row_with_every_allowed_token_at_minus_inf_raises():
    logits = _logits(3)
    logits[1] = float("-inf")
    logits[1, 0] = 5.0  # only a banned id ([PAD]) is finite
    with pytest.raises(ValueError, match="no token"):
        sample(logits)


def test_minus_inf_is_allowed_and_respected():
    logits = _logits(64)
    logits[:, 110:] = float("-inf")
    tokens, _ = sample(logits)
    assert bool((tokens < 110).all())


def test_absorbing_argument_checks():
    logits = _logits(4)
    with pytest.raises(ValueError, match="mask_id"):
        sample_absorbing(logits, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="rows"):
        sample_absorbing(logits, torch.zeros(3, dtype=torch.long), mask_id=103)
    with pytest.raises(ValueError, match="outside"):
        sample_absorbing(logits, torch.full((4,), V), mask_id=103)
    with pytest.raises(ValueError, match="unmask_prob"):
        sample_absorbing(logits, torch.full((4,), 103), mask_id=103, unmask_prob=1.5)
    with pytest.raises(ValueError, match="unmask_prob"):
        sample_absorbing(logits, torch.full((4,), 103), mask_id=103, unmask_prob=torch.ones(5))
    with pytest.raises(ValueError, match="mask_id"):
        sample_absorbing(logits, torch.full((4,), 103), mask_id=V)


def test_unknown_backend_on_this_device_is_a_clear_error():
    with pytest.raises((RuntimeError, ValueError), match="backend"):
        resolve_backend("native-missing", torch.device("cpu"))


def test_unmask_decision_checks_row_index_like_sampling():
    from dbert_kernels import unmask_decision

    masked = torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="row_index"):
        unmask_decision(masked, 0.5, row_index=torch.arange(3))
    with pytest.raises(ValueError, match="row_index"):
        unmask_decision(masked, 0.5, row_index=torch.tensor([0, -1, 2, 3]))
    assert torch.equal(unmask_decision(masked, 0.5, seed=3), unmask_decision(masked, 0.5, seed=3, row_index=torch.arange(4)))
