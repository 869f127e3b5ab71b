"""The reverse-process loop with model-free and tiny Hugging Face denoisers."""

from __future__ import annotations

import pytest
import torch

from dbert_kernels import BigramDenoiser, Denoiser, Schedule, build_template, generate, sample_absorbing
from dbert_kernels.denoisers import CallableDenoiser, HFMaskedLMDenoiser

V, MASK, PAD, CLS, SEP = 150, 103, 0, 101, 102
BANNED = [PAD, CLS, SEP, MASK]


def _den(seed: int = 0) -> BigramDenoiser:
    return BigramDenoiser(V, mask_id=MASK, seed=seed)


@pytest.mark.parametrize("strategy", ["posterior", "topk"])
@pytest.mark.parametrize("steps", [1, 3, 16])
def test_no_mask_left_and_no_banned_token(strategy, steps):
    out = generate(_den(), mask_id=MASK, batch_size=3, seq_len=21, steps=steps, strategy=strategy,
                   banned_ids=BANNED, progress=False, seed=1)
    assert out.shape == (3, 21) and out.dtype == torch.int64
    assert not bool(torch.isin(out, torch.tensor(BANNED)).any())


@pytest.mark.parametrize("strategy", ["posterior", "topk"])
def test_seeded_reproducibility(strategy):
    kw = dict(mask_id=MASK, batch_size=4, seq_len=16, steps=8, strategy=strategy, progress=False, top_k=20)
    a = generate(_den(), seed=5, **kw)
    assert torch.equal(a, generate(_den(), seed=5, **kw))
    assert not torch.equal(a, generate(_den(), seed=6, **kw))


def test_prefix_and_fixed_tokens_are_kept_and_conditioned_on():
    fixed = torch.full((12,), -1)
    fixed[0], fixed[-1] = CLS, SEP
    out = generate(_den(), mask_id=MASK, batch_size=5, seq_len=12, steps=4, fixed=fixed, prefix=[CLS, 42, 43],
                   banned_ids=BANNED, progress=False)
    assert bool((out[:, :3] == torch.tensor([CLS, 42, 43])).all()) and bool((out[:, -1] == SEP).all())
    assert not bool(torch.isin(out[:, 3:-1], torch.tensor(BANNED)).any())


def test_posterior_asks_only_for_revealed_rows_and_skips_empty_steps():
    den = _den()
    generate(den, mask_id=MASK, batch_size=2, seq_len=10, steps=50, progress=False, banned_ids=BANNED)
    assert den.rows_asked == 20  # each position's logits exactly once, at its reveal step
    assert den.calls < 50  # steps that reveal nothing do not call the denoiser


def test_topk_follows_the_schedule_counts():
    den = _den()
    sched = Schedule.d3pm(T=100)
    seen = []
    real = den.logits

    def spy(ids, t, rows):
        seen.append(int((ids == MASK).sum(1)[0]))
        return real(ids, t, rows)

    den.logits = spy
    generate(den, mask_id=MASK, batch_size=1, seq_len=20, steps=4, strategy="topk", schedule=sched, progress=False,
             banned_ids=BANNED)
    assert seen == [20, 15, 10, 5]  # round(20 * (1 - alphabar_s)) masked after each step


def test_decision_first_equals_fused_absorbing_step():
    """generate's decide-then-ask path equals the fused op on full logits, step by step."""
    den = _den(3)
    sched = Schedule.d3pm(T=10)
    out = generate(den, mask_id=MASK, batch_size=2, seq_len=9, steps=5, schedule=sched, seed=11, progress=False,
                   banned_ids=BANNED, temperature=0.8)
    ids = torch.full((2, 9), MASK)
    grid = [10 * (5 - k) / 5 for k in range(6)]
    for k in range(5):
        logits = den(ids).reshape(18, V)
        prob = float(sched.unmask_probability(grid[k + 1], grid[k]))
        tokens, _ = sample_absorbing(logits, ids.reshape(-1), mask_id=MASK, unmask_prob=prob, seed=11, offset=k,
                                     banned_ids=BANNED, temperature=0.8, backend="reference")
        ids = tokens.view(2, 9)
    assert torch.equal(ids, out)


def test_hf_masked_lm_head_only_on_needed_rows():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    den = HFMaskedLMDenoiser(model, pad_id=PAD)
    ids = torch.randint(104, V, (2, 12))
    ids[:, 3:7] = MASK
    rows = ids == MASK
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=(ids != PAD).long()).logits
    part = den(ids, rows=rows)
    assert part.shape == (8, V)
    assert torch.allclose(part, full[rows], atol=1e-5)
    out = generate(model, mask_id=MASK, batch_size=2, seq_len=12, steps=4, progress=False, banned_ids=BANNED)
    assert not bool(torch.isin(out, torch.tensor(BANNED)).any())


def test_plain_callable_with_and_without_time():
    table = torch.randn(V)

    def no_t(ids):
        return table.expand(*ids.shape, V)

    def with_t(ids, t):
        assert t is not None and t.shape == (ids.shape[0],)
        return table.expand(*ids.shape, V)

    for fn in (no_t, with_t):
        out = generate(fn, mask_id=MASK, batch_size=2, seq_len=5, steps=2, progress=False, banned_ids=BANNED)
        assert not bool(torch.isin(out, torch.tensor(BANNED)).any())
    with pytest.raises(ValueError, match=r"\[B, L, V\]"):
        CallableDenoiser(lambda ids: torch.zeros(3))(torch.zeros(1, 2, dtype=torch.long))


def test_progress_bar_runs(capsys):
    generate(_den(), mask_id=MASK, batch_size=1, seq_len=4, steps=2, progress=True, banned_ids=BANNED)
    assert "denoising" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, err",
    [
        (dict(steps=0), "steps"),
        (dict(batch_size=0), "batch_size"),
        (dict(seq_len=-1), "seq_len"),
        (dict(strategy="greedy"), "strategy"),
        (dict(prefix=list(range(30))), "prefix"),
        (dict(temperature=-1.0), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=1.5), "top_p"),
        (dict(seed=-3), "seed"),
    ],
)
def test_bad_arguments_raise(kwargs, err):
    base = dict(mask_id=MASK, batch_size=1, seq_len=8, steps=2, progress=False, banned_ids=BANNED)
    base.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=err):
        generate(_den(), **base)


def test_build_template():
    ids = build_template(2, 6, MASK, prefix=[CLS, 5], fixed=torch.tensor([-1, -1, -1, -1, -1, SEP]))
    assert ids.tolist() == [[CLS, 5, MASK, MASK, MASK, SEP]] * 2


def test_spindle_aware_posterior():
    """With token_info, positions whose guess is frequent (high code-form weight) are revealed earlier."""
    from dbert_kernels import token_information
    from dbert_kernels.strategies import SpindlePosteriorStep

    counts = torch.ones(V)
    counts[104:127] = 1e6  # a frequent block
    info = token_information(counts, "code")
    sched = Schedule.spindle(lam=0.3, T=100)
    ids = torch.full((1, 4), MASK)
    guess = torch.tensor([[110, 110, 140, 140]])  # frequent, frequent, rare, rare
    rule = SpindlePosteriorStep(sched, info, special_ids=BANNED)
    prob = rule.probability(ids, guess, 50.0, 75.0)[0]
    assert float(prob[0]) == float(prob[1]) > float(prob[2]) == float(prob[3])
    assert bool((rule.probability(ids, guess, 0.0, 25.0) == 1).all())

    out = generate(_den(), mask_id=MASK, batch_size=4, seq_len=16, steps=4, schedule=sched, token_info=info,
                   progress=False, banned_ids=BANNED, seed=0)
    assert not bool(torch.isin(out, torch.tensor(BANNED)).any())
    with pytest.raises(ValueError, match="spindle"):
        generate(_den(), mask_id=MASK, steps=2, schedule=Schedule.d3pm(), token_info=info, progress=False,
                 banned_ids=BANNED)


def test_a_denoiser_returning_the_wrong_number_of_rows_is_named():
    class Short(Denoiser):
        vocab_size = 50

        def logits(self, ids, t, rows):
            return torch.zeros(int(rows.sum()) - 1, self.vocab_size)

    with pytest.raises(ValueError, match="the denoiser returned logits"):
        generate(Short(), mask_id=3, batch_size=2, seq_len=5, steps=2, banned_ids=[], progress=False)


def test_a_callable_gets_the_time_step_only_when_it_declares_it():
    """``f(ids, t)`` and ``f(ids, *, t=None)`` receive the step's time; ``f(ids)`` and a callable
    with an optional second parameter of another name (``f(ids, scale=1.0)``) do not."""
    from dbert_kernels.denoisers import CallableDenoiser

    vocab = 11
    seen: dict[str, list] = {}

    def make(name):
        def logits(ids):
            return torch.zeros(*ids.shape, vocab)

        return logits, seen.setdefault(name, [])

    plain, _ = make("plain")
    base, got_t = make("positional")
    base_kw, got_kw = make("keyword")
    base_scale, got_scale = make("scale")
    callables = {
        "plain": plain,
        "positional": lambda ids, t: (got_t.append(t), base(ids))[1],
        "keyword": lambda ids, *, t=None: (got_kw.append(t), base_kw(ids))[1],
        "scale": lambda ids, scale=1.0: (got_scale.append(scale), base_scale(ids))[1],
    }
    ids = torch.full((2, 5), 3)
    rows = ids == 3
    for fn in callables.values():
        CallableDenoiser(fn).logits(ids, torch.tensor(0.5), rows)
    assert got_t == [torch.tensor(0.5)] and got_kw == [torch.tensor(0.5)]
    assert got_scale == [1.0]  # the default, not the time step
