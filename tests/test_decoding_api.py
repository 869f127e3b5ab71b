"""Decoding settings as objects: the registries, their defaults written once, extension from
outside the package (a strategy in ``dbert generate --strategy``, a backend in ``backend=``), and
the options that are refused rather than dropped."""

from __future__ import annotations

import argparse
import inspect

import pytest
import torch

import dbert_kernels as dk
from dbert_kernels import backends, reference
from dbert_kernels.strategies import (
    OPTIONS,
    STRATEGIES,
    EntropyBoundStep,
    FactorStep,
    Sampling,
    StepState,
    Strategy,
    ThresholdStep,
    TopKStep,
)
from dbert_model.arch import DEFAULT_SAMPLING
from dbert_model.cli import build_parser, main

V, MASK = 32, 31


def _den(seed: int = 0) -> dk.BigramDenoiser:
    return dk.BigramDenoiser(V, MASK, seed=seed)


BASE = dict(mask_id=MASK, batch_size=2, seq_len=12, steps=6, progress=False)
KW = dict(BASE, banned_ids=[])


def test_strategy_classes_take_their_defaults_from_options():
    """Each hyper-parameter's default is written once, in OPTIONS: the classes' signatures use it."""
    for cls in (TopKStep, ThresholdStep, FactorStep, EntropyBoundStep):
        for name, param in inspect.signature(cls).parameters.items():
            if name in OPTIONS:
                assert param.default == OPTIONS[name].default, (cls.__name__, name)
    for spec in STRATEGIES.values():
        assert all(name in OPTIONS for name in spec.options)


def test_cli_choices_and_defaults_come_from_the_registries():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    g = sub.choices["generate"]
    flags = {a.dest: a for a in g._actions}
    assert tuple(flags["strategy"].choices) == tuple(STRATEGIES)
    assert flags["strategy"].default == dk.DEFAULT_STRATEGY
    assert flags["cache"].choices == dk.CACHE_MODES
    for name, opt in OPTIONS.items():
        if opt.cli:
            assert flags[name].default is None  # unset: the strategy's default applies
            assert f"default {opt.default}" in flags[name].help
            if opt.choices:  # shown in the help; checked before the model loads (one line, exit 2)
                assert all(choice in flags[name].metavar for choice in opt.choices)
        else:
            assert name not in flags
    for name in ("temperature", "top_k", "top_p", "seed", "backend"):
        assert flags[name].default == getattr(DEFAULT_SAMPLING, name)


def test_generate_takes_objects_and_the_flat_keywords_build_the_same():
    flat = dk.generate(_den(), strategy="threshold", threshold=0.5, temperature=0.7, top_k=5, seed=3, **KW)
    sampling = Sampling(temperature=0.7, top_k=5, seed=3, banned_ids=[])
    objects = dk.generate(_den(), strategy=ThresholdStep(threshold=0.5), sampling=sampling, **BASE)
    assert torch.equal(flat, objects)
    assert torch.equal(flat, dk.generate(_den(), strategy=dk.make_strategy("threshold", threshold=0.5),
                                         sampling=sampling, **BASE))


class _LeftFirst(Strategy):
    """A toy strategy: reveal the leftmost masked position of each row with the greedy token."""

    def step(self, state: StepState, ask, sampling: Sampling) -> torch.Tensor:
        first = state.in_play & (state.in_play.cumsum(dim=1) == 1)
        logits = ask(state.ids, state.t, first)
        tokens, _, _ = sampling.draw(logits, state.offset, state.row_index[first.reshape(-1)])
        state.ids[first] = tokens
        return state.ids


@pytest.fixture
def toy_strategy():
    dk.register_strategy("left-first", lambda _schedule, _info: _LeftFirst(), help="toy: left to right")
    yield "left-first"
    STRATEGIES.pop("left-first")


def test_a_strategy_registered_from_outside_runs_in_generate(toy_strategy):
    seen = []
    ids = dk.generate(_den(), strategy=toy_strategy, on_step=lambda k, i, rev: seen.append(rev.nonzero()[:, 1].tolist()),
                      **{**KW, "steps": 12, "seq_len": 6})
    assert not bool((ids == MASK).any())
    assert seen[:3] == [[0, 0], [1, 1], [2, 2]]
    with pytest.raises(ValueError, match="does not use threshold"):
        dk.generate(_den(), strategy=toy_strategy, threshold=0.5, **KW)


def test_a_strategy_registered_from_outside_appears_in_dbert_generate(toy_strategy, decoding_checkpoint, capsys):
    checkpoint = decoding_checkpoint
    assert toy_strategy in build_parser().parse_args(["generate", "--strategy", toy_strategy]).strategy
    assert main(["generate", "--model", checkpoint, "-n", "2", "--steps", "16", "--no-progress",
                 "--strategy", toy_strategy]) == 0
    assert f"{toy_strategy}, 15 denoiser calls" in capsys.readouterr().err  # one position per call after [CLS]


def test_a_backend_registered_from_outside_is_selected_by_name(monkeypatch):
    monkeypatch.setattr(backends, "_LOADERS", dict(backends._LOADERS))
    monkeypatch.setattr(backends, "_CACHE", dict(backends._CACHE))
    calls = []

    class Shadow:
        spindle_mask = staticmethod(reference.spindle_mask)
        topk_unmask = staticmethod(reference.topk_unmask)

        @staticmethod
        def sample(*args, **kwargs):
            calls.append(1)
            return reference.sample(*args, **kwargs)

    dk.register_backend("shadow", lambda: Shadow, ("cpu",))
    assert "shadow" in dk.available_backends("cpu") and "shadow" in dk.backend_names()
    want = dk.generate(_den(), backend="reference", **KW)
    got = dk.generate(_den(), backend="shadow", **KW)
    assert calls and torch.equal(got, want)
    with pytest.raises(ValueError, match="other than 'auto'"):
        dk.register_backend("auto", lambda: Shadow, ("cpu",))
    with pytest.raises(ValueError, match="device types"):
        dk.register_backend("x", lambda: Shadow, "cpu")


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(strategy="posterior", threshold=0.5), ValueError, "does not use threshold"),
    (dict(strategy="topk", gamma=0.5), ValueError, "does not use gamma"),
    (dict(strategy="threshold", confidence="random"), ValueError, "topk"),
    (dict(strategy="topk", counts="linear"), ValueError, "counts"),
    (dict(strategy="topk", scores="softmax"), ValueError, "scores"),
    (dict(strategy="entropy_bound", order="random"), ValueError, "order"),
    (dict(strategy="factor", factor=0), ValueError, "factor"),
    (dict(strategy="topk", confidence="random", gumbel_temperature=1.0), ValueError, "gumbel_temperature"),
    (dict(strategy="llada", counts="schedule"), ValueError, "does not use counts"),
    (dict(strategy="nope"), ValueError, "strategy must be one of"),
    (dict(strategy=ThresholdStep(), threshold=0.5), TypeError, "set"),
    (dict(tempreature=0.5), TypeError, "tempreature"),
    (dict(sampling=Sampling(seed=1), seed=2), TypeError, "not both"),
    (dict(sampling=Sampling(seed=1), banned_ids=[]), TypeError, "not both"),
    (dict(sampling={"seed": 1}), TypeError, "must be a dbert_kernels.Sampling"),
    (dict(sampling=Sampling(mask_id=3)), ValueError, "differs from mask_id"),
    (dict(cfg_scale=-1.0), ValueError, "cfg_scale"),
    (dict(cfg_scale=True), ValueError, "cfg_scale"),
    (dict(cfg_scale=1.0, cache="dual", block_length=4), ValueError, "cfg_scale"),
    (dict(cache="triple", block_length=4), ValueError, "cache"),
    (dict(reveal="authors"), ValueError, "spindle"),
    (dict(special_ids=[1]), ValueError, "special_ids"),
])
def test_options_are_named_when_refused(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        dk.generate(_den(), **{**(BASE if "sampling" in kwargs else KW), **kwargs})


def test_a_cache_refresh_runs_only_rows_with_masks_left_in_the_block():
    """Row 0's template fills the first block, so during it only row 1 is run, refreshes included
    (row 0 still has masks, in the second block)."""
    bert = pytest.importorskip("transformers")
    config = bert.BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    model = bert.BertForMaskedLM(config).eval()
    fixed = torch.full((2, 8), -1)
    fixed[0, :4] = 5
    kw = dict(mask_id=MASK, batch_size=2, seq_len=8, steps=8, strategy="topk", banned_ids=[], progress=False,
              fixed=fixed, block_length=4, cache="dual", refresh_every=1, return_stats=True)
    _, stats = dk.generate(model, **kw)
    assert stats.calls == 8
    assert stats.rows_forwarded == 4 * 1 + 4 * 2


def test_token_info_goes_only_to_strategies_registered_to_take_it(toy_strategy):
    info = torch.rand(V)
    seen = []
    dk.register_strategy("left-first-info", lambda _schedule, token_info: seen.append(token_info) or _LeftFirst(),
                         token_info=True)
    try:
        dk.generate(_den(), strategy="left-first-info", token_info=info, **{**KW, "steps": 12, "seq_len": 6})
        assert seen and seen[0] is info
        with pytest.raises(ValueError, match="token_info"):
            dk.generate(_den(), strategy=toy_strategy, token_info=info, **KW)
    finally:
        STRATEGIES.pop("left-first-info")
