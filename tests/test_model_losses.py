"""Training objectives: weights, agreement of the D3PM and MDLM bounds, overfitting a tiny set."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dbert_kernels import Schedule, token_information
from dbert_model import diffusion_loss
from dbert_model.losses import (
    forward_mask,
    keep_probabilities,
    posterior_weights,
    sample_times,
    token_classes,
)

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
    real, noisable = (m.reshape(-1) for m in token_classes(ids, settings()))
    keep0 = 0.999 if schedule == "spindle" else 1.0  # the code-form spindle clips real tokens' keep at 0.999
    # [CLS] is never masked; [SEP]/[PAD] follow the base schedule (keep 1 at t = 0)
    exact = (float(ce[real].sum()) * keep0 + float(ce[noisable & ~real].sum())) / ids.shape[0]
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


def _toy_settings(**overrides):
    """Ids 1 = [CLS], 0 = [PAD], 9 = [SEP], 8 = [MASK] in a 10-token vocabulary."""
    return settings(special_ids={"cls": 1, "sep": 9, "pad": 0, "mask": 8, "unk": 7}, vocab_size=10, **overrides)


TOY_INFO = torch.tensor([0.0, 0.9, 0.5, 0.7, 0.6, 0.5, 0.5, 0.5, 0.5, 0.8])


def test_spindle_mean_is_over_real_tokens_only() -> None:
    """spindle(lam=0.3, T=1000), t = 500: tokens 2, 3, 4 keep [.470, .530, .500] (the authors'
    numbers, mean over real tokens); with [SEP]/[PAD] in the mean they would keep [.573, .633, .603]."""
    s = _toy_settings()
    schedule = Schedule.spindle(0.3, T=1000)
    t = torch.tensor([500.0], dtype=torch.float64)
    for ids in ([[1, 2, 3, 4, 0, 0, 0, 0]], [[1, 2, 3, 4, 9, 0, 0, 0]], [[1, 2, 3, 4, 9]]):
        ids = torch.tensor(ids)
        real, noisable = token_classes(ids, s)
        keep = keep_probabilities(schedule, t, TOY_INFO[ids], real, noisable)
        torch.testing.assert_close(keep[0, 1:4], torch.tensor([0.470, 0.530, 0.500]), rtol=0, atol=1e-6)
        assert keep[0, 0] == 1.0  # [CLS] is never masked
        torch.testing.assert_close(keep[0, 4:], torch.full((ids.shape[1] - 4,), 0.5))  # alphabar(500)


@pytest.mark.parametrize("t", [250.0, 500.0, 900.0])
def test_forward_mask_rates_follow_the_keep_probabilities(t: float) -> None:
    """Seeded statistical test: per-position masking frequencies over many keys match
    1 - keep_probabilities (real tokens: spindle, mean over real tokens; [SEP]/[PAD]: alphabar)."""
    s = _toy_settings()
    ids = torch.tensor([[1, 2, 3, 4, 9, 0, 0, 0], [1, 5, 6, 9, 0, 0, 0, 0]])
    tt = torch.full((2,), t, dtype=torch.float64)
    n = 4000  # the rows of one call are independent draws (Philox counters differ by row)
    draws = forward_mask(ids.repeat(n, 1), tt.repeat(n), s, TOY_INFO, seed=3, offset=0, backend="reference")[1]
    draws = draws.reshape(n, *ids.shape).double().mean(0)
    real, noisable = token_classes(ids, s)
    expected = 1.0 - keep_probabilities(s.build_schedule(), tt, TOY_INFO[ids], real, noisable).double()
    se = (expected * (1 - expected) / 4000).sqrt().clamp_min(1e-9)
    assert ((draws - expected).abs() <= 5 * se + 1e-12).all(), (draws, expected)
    assert (draws[:, 0] == 0).all()
    noised, masked = forward_mask(ids, tt, s, TOY_INFO, seed=3, offset=0, backend="reference")
    assert torch.equal(noised, torch.where(masked, torch.full_like(ids, 8), ids))


def test_padding_does_not_move_the_real_tokens_in_the_loss() -> None:
    """The NELBO of the real tokens does not depend on how much padding follows them."""
    s = _toy_settings(max_len=8)
    stub = UnigramStub(10)
    short = torch.tensor([[1, 2, 3, 4, 9]])
    padded = torch.tensor([[1, 2, 3, 4, 9, 0, 0, 0]])
    t = torch.tensor([400.0], dtype=torch.float64)
    for ids in (short, padded):
        real, noisable = token_classes(ids, s)
        w = posterior_weights(s.build_schedule(), s, t, TOY_INFO[ids], real, noisable)
        if ids is short:
            ref = w[0, :4]
        torch.testing.assert_close(w[0, :4], ref)
    out = diffusion_loss(stub, padded, settings=s, token_info=TOY_INFO, seed=0, offset=0, t=t)
    assert out.n_real == 3 and out.n_tokens == 7
    assert float(out.nelbo_real[0]) <= float(out.nelbo[0]) + 1e-6


def test_hybrid_ce_set_and_normalisation() -> None:
    """``hybrid_ce``: masked positions only, or also every unmasked real token (the authors');
    ``loss_norm``: per noisable position or per sentence (the authors'). Checked against the
    closed form for a predictor whose CE does not depend on the input."""
    ids = train_ids(6)
    info = token_information(counts(ids))
    stub = UnigramStub(info.numel())
    ce_all = nn.functional.cross_entropy(stub.logits.detach().expand(ids.numel(), -1), ids.reshape(-1),
                                         reduction="none").reshape(ids.shape)
    t = torch.full((ids.shape[0],), 300.0, dtype=torch.float64)
    outs = {}
    for ce_set in ("masked", "all"):
        for norm in ("token", "sentence"):
            s = settings(hybrid_ce=ce_set, loss_norm=norm, hybrid_lambda=0.5)
            outs[ce_set, norm] = diffusion_loss(stub, ids, settings=s, token_info=info, seed=2, offset=1, t=t)
    s = settings()
    _, masked = forward_mask(ids, t, s, info, seed=2, offset=1)
    real, noisable = token_classes(ids, s)
    assert (real & ~masked).any() and masked.any()
    vb = float(outs["masked", "token"].nelbo.sum()) / float(s.T)
    for (ce_set, norm), out in outs.items():
        rows = masked | real if ce_set == "all" else masked
        denom = int(noisable.sum()) if norm == "token" else ids.shape[0]
        expected = (vb + 0.5 * float(ce_all[rows].sum())) / denom
        assert abs(float(out.loss) - expected) < 1e-4 * abs(expected), (ce_set, norm, float(out.loss), expected)
        torch.testing.assert_close(out.nelbo, outs["masked", "token"].nelbo)  # the bound does not change


def test_loss_settings_are_validated() -> None:
    for name in ("hybrid_ce", "loss_norm", "time_init"):
        with pytest.raises(ValueError, match=name):
            settings(**{name: "bogus"})
