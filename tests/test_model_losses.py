"""Training objectives: weights, agreement of the D3PM and MDLM bounds, overfitting a tiny set."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dbert_kernels import Schedule, token_information
from dbert_model import diffusion_loss
from dbert_model.losses import posterior_weights, sample_times

from .model_fixtures import counts, settings, tiny_model, train_ids


class UnigramStub(nn.Module):
    """Predicts the same distribution at every position, whatever the input: CE does not depend
    on the mask or on t, so the expected NELBO of both losses telescopes to a closed form."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.randn(vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, ids, t=None, rows=None):
        return self.logits.expand(int(rows.sum()), -1)


def test_d3pm_and_mdlm_weights_on_the_linear_schedule() -> None:
    t = torch.tensor([1.0, 10.0, 500.0, 999.5], dtype=torch.float64)
    info = torch.zeros(4, 3)
    valid = torch.ones(4, 3, dtype=torch.bool)
    d3pm = posterior_weights(Schedule.d3pm(1000), settings(schedule="d3pm"), t, info, valid)
    mdlm = posterior_weights(Schedule.d3pm(1000), settings(schedule="d3pm", loss="mdlm"), t, info, valid)
    expected = (1000.0 / t).to(torch.float32)[:, None].expand(4, 3)  # T r_t = T / t ; w = 1 / u
    # token_alphabar is float32: r = (ab_s - ab_t) / (1 - ab_t) carries ~1e-4 relative rounding
    torch.testing.assert_close(d3pm.float(), expected, rtol=2e-4, atol=0)
    torch.testing.assert_close(mdlm.float(), expected, rtol=2e-4, atol=0)


def test_sample_times_are_stratified_and_in_range() -> None:
    gen = torch.Generator().manual_seed(0)
    t = sample_times(8, settings(), gen)
    assert torch.equal(t, t.round()) and t.min() >= 1 and t.max() <= 1000
    assert torch.equal(torch.floor((t - 1) / 125), torch.arange(8, dtype=torch.float64))
    u = sample_times(8, settings(loss="mdlm"), gen) / 1000
    assert torch.equal(torch.floor(u * 8), torch.arange(8, dtype=torch.float64))


@pytest.mark.parametrize("schedule", ["d3pm", "spindle"])
def test_d3pm_and_mdlm_agree_in_expectation(schedule: str) -> None:
    """For a mask-independent predictor both bounds equal sum_i (ab_i(0) - ab_i(T)) CE_i exactly."""
    ids = train_ids(16)
    info = token_information(counts(ids))
    stub = UnigramStub(info.numel())
    ce = nn.functional.cross_entropy(stub.logits.detach().expand(ids.numel(), -1), ids.reshape(-1), reduction="none")
    valid = ids.reshape(-1) != 2  # [CLS] is never masked
    keep0 = 0.999 if schedule == "spindle" else 1.0  # the code-form spindle clips keep at 0.999
    exact = float(ce[valid].sum()) * keep0 / ids.shape[0]
    estimates = {}
    for loss in ("d3pm", "mdlm"):
        s = settings(schedule=schedule, loss=loss)
        draws = torch.stack([
            diffusion_loss(stub, ids, settings=s, token_info=info, seed=11, offset=k).nelbo for k in range(150)
        ]).double()
        mean, se = float(draws.mean()), float(draws.std() / math.sqrt(draws.numel()))
        estimates[loss] = mean
        assert abs(mean - exact) < 4 * se, (loss, mean, exact, se)
    assert abs(estimates["d3pm"] - estimates["mdlm"]) < 0.05 * exact


@pytest.mark.parametrize("loss", ["d3pm", "mdlm"])
def test_loss_is_finite_and_falls_on_a_tiny_overfit_set(loss: str) -> None:
    ids = train_ids(16)
    s = settings(loss=loss)
    info = token_information(counts(ids))
    model = tiny_model("tad")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    values = []
    for step in range(60):
        torch.manual_seed(step)
        out = diffusion_loss(model, ids, settings=s, token_info=info, seed=5, offset=step % 4)
        assert torch.isfinite(out.loss)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        values.append(float(out.loss.detach()))
    first, last = sum(values[:4]) / 4, sum(values[-4:]) / 4
    assert last < 0.6 * first, (first, last)


def test_loss_needs_token_info_for_the_spindle_schedule() -> None:
    with pytest.raises(ValueError, match="token_info"):
        diffusion_loss(tiny_model(), train_ids(2), settings=settings(), token_info=None)
