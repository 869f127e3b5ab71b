"""Decoding strategies, blocks, early stop and the block cache."""

from __future__ import annotations

import math

import pytest
import torch

import dbert_kernels as dk
from dbert_kernels import BigramDenoiser, Schedule, generate, token_information
from dbert_kernels.strategies import (
    EntropyBoundStep,
    SpindlePosteriorStep,
    StepState,
    ThresholdStep,
    authors_reveal_probability,
)

V, MASK, PAD, CLS, SEP = 150, 103, 0, 101, 102
BANNED = [PAD, CLS, SEP, MASK]


def _den(seed: int = 0) -> BigramDenoiser:
    return BigramDenoiser(V, mask_id=MASK, seed=seed)


def _state(in_play: torch.Tensor, steps_left: int = 100) -> StepState:
    batch, length = in_play.shape
    ids = torch.where(in_play, MASK, 200 % V)
    return StepState(ids=ids, in_play=in_play, n_free=in_play.sum(1), t=1.0, s=0.5, offset=0,
                     steps_left=steps_left, row_index=torch.arange(batch * length))


# ----------------------------------------------------------------------------- rules on hand-built inputs
def test_threshold_count_follows_its_rule():
    in_play = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
    score = torch.tensor([[0.95, 0.2, 0.91, 0.5, 0.99], [0.1, 0.2, 0.3, 0.4, 0.5]])
    rule = ThresholdStep(0.9)
    assert rule.count(score, _state(in_play)).tolist() == [2, 1]  # out-of-play 0.99 ignored; at least 1
    assert ThresholdStep(0.9, min_per_step=3).count(score, _state(in_play)).tolist() == [3, 3]
    assert ThresholdStep(0.05, max_per_step=2).count(score, _state(in_play)).tolist() == [2, 2]
    # the budget wins: 4 and 5 masked with 2 calls left -> at least 2 and 3
    assert ThresholdStep(0.9, max_per_step=1).count(score, _state(in_play, steps_left=2)).tolist() == [2, 3]
    # at least the threshold passes, as in Fast-dLLM (it drops confidences strictly below)
    assert ThresholdStep(1.0).count(torch.ones(2, 5), _state(in_play)).tolist() == [4, 5]
    assert ThresholdStep(1.0).count(torch.full((2, 5), 0.999), _state(in_play)).tolist() == [1, 1]


def test_entropy_bound_count_follows_its_rule():
    in_play = torch.tensor([[True, True, True, True, True, False]])
    entropy = torch.tensor([[0.25, 0.0625, 2.0, 0.125, 0.5, 0.0]])  # binary fractions: sums without rounding
    # sorted in play: 1/16 1/8 1/4 1/2 2; the sum minus the largest: 0 1/16 3/16 7/16 15/16
    assert EntropyBoundStep(0.2).count(entropy, _state(in_play)).tolist() == [3]
    assert EntropyBoundStep(0.0625).count(entropy, _state(in_play)).tolist() == [2]
    assert EntropyBoundStep(0.01).count(entropy, _state(in_play)).tolist() == [1]
    assert EntropyBoundStep(1.0).count(entropy, _state(in_play)).tolist() == [5]
    assert EntropyBoundStep(1.0, max_per_step=2).count(entropy, _state(in_play)).tolist() == [2]


class _FixedLogits:
    """A denoiser whose logits at position j put one token far ahead with a set margin."""

    def __init__(self, token: torch.Tensor, height: torch.Tensor) -> None:
        self.token, self.height = token, height
        self.vocab_size = V

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*ids.shape, V)
        logits.scatter_(2, self.token.expand(ids.shape[0], -1)[..., None], self.height.expand(ids.shape[0], -1)[..., None])
        return logits


def test_threshold_step_reveals_the_confident_positions_first():
    length = 6
    token = torch.tensor([[110, 111, 112, 113, 114, 115]])
    height = torch.tensor([[30.0, 0.0, 30.0, 0.0, 0.0, 30.0]])  # positions 0, 2, 5 are sure (p ~ 1)
    seen = []
    out, stats = generate(dk.as_denoiser(_FixedLogits(token, height)), mask_id=MASK, batch_size=2, seq_len=length,
                          steps=6, strategy="threshold", threshold=0.9, banned_ids=BANNED, progress=False,
                          on_step=lambda k, ids, rev: seen.append(rev.clone()), return_stats=True)
    assert seen[0][0].tolist() == [True, False, True, False, False, True]
    assert torch.equal(out[:, [0, 2, 5]], token[:, [0, 2, 5]].expand(2, -1))
    assert not bool((out == MASK).any()) and stats.calls <= 6
    assert stats.rows_forwarded == 2 * stats.calls


def test_entropy_bound_never_leaves_mask_and_counts_calls():
    out, stats = generate(_den(), mask_id=MASK, batch_size=3, seq_len=20, steps=8, strategy="entropy_bound",
                          gamma=0.5, banned_ids=BANNED, progress=False, return_stats=True)
    assert not bool(torch.isin(out, torch.tensor(BANNED)).any())
    assert 1 <= stats.calls <= 8 and sum(stats.revealed) == 60


@pytest.mark.parametrize("confidence", ["prob", "margin", "neg_entropy"])
@pytest.mark.parametrize("strategy", ["topk", "threshold"])
def test_confidence_measures_run_and_fill(strategy, confidence):
    kw = dict(mask_id=MASK, batch_size=2, seq_len=16, steps=5, strategy=strategy, confidence=confidence,
              banned_ids=BANNED, progress=False, seed=3, **({"threshold": 0.5} if strategy == "threshold" else {}))
    out = generate(_den(), **kw)
    assert not bool(torch.isin(out, torch.tensor(BANNED)).any())
    assert torch.equal(out, generate(_den(), **kw))


@pytest.mark.parametrize("strategy", ["posterior", "topk", "threshold"])
@pytest.mark.parametrize("block_length", [1, 5, 16])
def test_blocks_fill_left_to_right_and_keep_fixed_tokens(strategy, block_length):
    fixed = torch.full((16,), -1)
    fixed[0], fixed[9] = CLS, 42
    first_reveal = torch.full((16,), -1)

    def watch(k, ids, revealed):
        first_reveal[(revealed[0]) & (first_reveal < 0)] = k

    out, stats = generate(_den(), mask_id=MASK, batch_size=1, seq_len=16, steps=16, strategy=strategy, fixed=fixed,
                          block_length=block_length, banned_ids=BANNED, progress=False, on_step=watch,
                          return_stats=True)
    assert int(out[0, 0]) == CLS and int(out[0, 9]) == 42 and not bool((out == MASK).any())
    free = first_reveal[(fixed < 0)]
    blocks = (torch.arange(16)[fixed < 0] - 1) // block_length  # laid from the first free position, 1
    for b in range(int(blocks.max())):  # every position of block b is revealed before any of block b + 1
        if bool((blocks == b).any()) and bool((blocks == b + 1).any()):
            assert int(free[blocks == b].max()) < int(free[blocks == b + 1].min())
    assert stats.steps <= 16


def test_early_stop_fills_only_ended_rows():
    class StopAt3:
        vocab_size = V

        def __call__(self, ids):
            logits = torch.zeros(*ids.shape, V)
            logits[:, :, 120] = 5.0
            logits[:, 3, SEP] = 50.0  # [SEP] is sure at position 3
            return logits

    allowed = [PAD, CLS, MASK]
    out, stats = generate(dk.as_denoiser(StopAt3()), mask_id=MASK, batch_size=2, seq_len=12, steps=12,
                          strategy="threshold", threshold=0.9, banned_ids=allowed, stop_ids=[SEP], pad_id=PAD,
                          progress=False, return_stats=True)
    assert (out[:, 3] == SEP).all() and (out[:, :3] != PAD).all()
    assert stats.early_stopped_rows == 2 and stats.filled_positions > 0
    assert bool(((out[:, 4:] == PAD) | (out[:, 4:] == 120)).all())
    # a [SEP] with masks before it does not end the row
    ids = torch.tensor([[CLS, MASK, SEP, MASK]])
    from dbert_kernels.sampler import GenerateStats, _stop_early

    st = GenerateStats()
    _stop_early(ids, MASK, torch.tensor([SEP]), PAD, st)
    assert ids.tolist() == [[CLS, MASK, SEP, MASK]] and st.early_stopped_rows == 0


def test_rows_with_nothing_in_play_are_not_run():
    den = _den()
    batches = []
    real = den.logits
    den.logits = lambda ids, t, rows: batches.append(ids.shape[0]) or real(ids, t, rows)
    fixed = torch.full((2, 8), -1)
    fixed[1] = 120  # row 1 is complete from the start
    _, stats = generate(den, mask_id=MASK, batch_size=2, seq_len=8, steps=4, strategy="topk", fixed=fixed,
                        banned_ids=BANNED, progress=False, return_stats=True)
    assert batches == [1, 1, 1, 1] and stats.rows_forwarded == 4  # only row 0 ever runs


@pytest.mark.parametrize(
    "kwargs, err",
    [
        (dict(strategy="beam"), "strategy"),
        (dict(strategy="threshold", threshold=0.0), "threshold"),
        (dict(strategy="threshold", threshold=1.5), "threshold"),
        (dict(strategy="entropy_bound", gamma=0.0), "gamma"),
        (dict(strategy="entropy_bound", gamma=-1.0), "gamma"),
        (dict(block_length=0), "block_length"),
        (dict(cache="dual", block_length=4), "cache"),
        (dict(cache="triple", block_length=4), "cache"),
        (dict(confidence="logit", strategy="topk"), "confidence"),
        (dict(strategy="threshold", min_per_step=0), "min_per_step"),
        (dict(stop_ids=[SEP]), "pad_id"),
        (dict(block_length=1, steps=2), "blocks"),
        (dict(reveal="guess", token_info=torch.zeros(V), schedule=Schedule.spindle()), "reveal"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, err):
    base = dict(mask_id=MASK, batch_size=1, seq_len=8, steps=8, progress=False, banned_ids=BANNED)
    base.update(kwargs)
    with pytest.raises(ValueError, match=err):
        generate(_den(), **base)


@pytest.mark.parametrize(
    "kwargs, exc, err",
    [
        (dict(prefix=[5.7, 6.2]), TypeError, "prefix"),  # would be truncated
        (dict(fixed=torch.full((8,), 7.0)), TypeError, "fixed"),
        (dict(fixed=torch.ones(8, dtype=torch.bool)), TypeError, "fixed"),  # would be taken as ids 1
        (dict(stop_ids=[SEP], pad_id=V), ValueError, "pad_id"),
        (dict(stop_ids=[SEP], pad_id=-2), ValueError, "pad_id"),
        (dict(stop_ids=[SEP], pad_id=MASK), ValueError, "pad_id"),
        (dict(stop_ids=[SEP], pad_id=1.5), TypeError, "pad_id"),
        (dict(pad_id=PAD), ValueError, "pad_id"),  # without stop_ids: unused
        (dict(stop_ids=[V + 3], pad_id=PAD), ValueError, "stop_ids"),
        (dict(cache="dual"), ValueError, "block_length"),
        (dict(mask_id=V + 5), ValueError, "mask_id"),
        (dict(mask_id=2.0), TypeError, "mask_id"),
        (dict(confidence="foo"), ValueError, "confidence"),
        (dict(strategy="posterior", confidence="margin"), ValueError, "confidence"),
        (dict(strategy="entropy_bound", confidence="neg_entropy"), ValueError, "confidence"),
        (dict(reveal="foo"), ValueError, "reveal"),
        (dict(reveal="authors"), ValueError, "reveal"),  # without token_info: unused
        (dict(refresh_every=2), ValueError, "refresh_every"),
    ],
)
def test_options_that_would_be_dropped_or_misread_are_refused(kwargs, exc, err):
    """Every option is checked on the public ``generate``: a value of the wrong kind, outside the
    vocabulary, or that the rest of the call would ignore is an error naming the option."""
    base = dict(mask_id=MASK, batch_size=1, seq_len=8, steps=8, progress=False, banned_ids=BANNED)
    base.update(kwargs)
    with pytest.raises(exc, match=err):
        generate(_den(), **base)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_a_cuda_device_without_a_gpu_is_named():
    with pytest.raises(ValueError, match="device"):
        generate(_den(), mask_id=MASK, batch_size=1, seq_len=8, steps=8, progress=False, banned_ids=BANNED,
                 device="cuda")


# ----------------------------------------------------------------------------- spindle reveal rules
def _authors_port(probs, word_freq, guess_ids, lam, T, t, step):
    """The authors' released reverse step (MaskDiffusion.noise_fn + qt_reverse with their linear
    'mutual' beta schedule), written out independently in float64: the probability that a
    masked position is still [MASK] after the step, from the model's probabilities ``probs``
    [L, V] (their [MASK] entry 0). Returns the reveal probability per position."""
    probs = probs.double()
    betas = torch.tensor([1.0 / (T - i) for i in range(T)], dtype=torch.float64)
    state = torch.cumprod(torch.cat([torch.zeros(1, dtype=torch.float64), betas]).neg().add(1.0), 0)
    state[-1] = 0.0
    s = t - step
    freq = word_freq.double()[guess_ids]
    freq = freq - freq.mean()
    amp = lam * math.sin(s / T * math.pi)
    p = (state[s] + freq * amp).clamp(0.0, 0.999)[:, None] if s > 0 else torch.ones(len(freq), 1)  # q0 at s = 0
    non_mask = p * probs
    at_s = non_mask.clone()
    at_s[:, MASK] = 1 - non_mask.sum(-1) + non_mask[:, MASK]
    trans = torch.zeros(V, dtype=torch.float64)
    trans[MASK] = 1.0
    for i in range(step):  # qt_reverse from t back to s, one beta at a time
        beta = betas[t - 1 - i]
        at_mask = trans[MASK].clone()
        trans = (1 - beta) * trans + beta * at_mask
        trans[MASK] = at_mask
    post = at_s * trans[None, :]
    post = post / post.sum(-1, keepdim=True)
    return 1.0 - post[:, MASK]


def test_authors_rule_matches_a_port_of_their_formula():
    gen = torch.Generator().manual_seed(0)
    counts = torch.randint(1, 10_000, (V,), generator=gen).float()
    info = token_information(counts, "code")
    T, lam = 512, 0.3
    sched = Schedule.spindle(lam=lam, T=T)
    rule = SpindlePosteriorStep(sched, info, reveal="authors", special_ids=BANNED)
    logits = torch.randn(10, V, generator=gen) * 3
    logits[:, BANNED] = float("-inf")
    guess = logits.argmax(-1)
    ids = torch.full((1, 10), MASK)
    for t, step in [(256, 8), (500, 4), (100, 32), (16, 16), (8, 8)]:
        ours = rule.probability(ids, guess[None], float(t - step), float(t))[0]
        theirs = _authors_port(torch.softmax(logits, -1), info, guess, lam, T, t, step)
        assert torch.allclose(ours.double(), theirs, atol=2e-6), (t, step)


def test_authors_and_exact_rules_on_the_documented_numbers():
    """T = 512, t 256 -> 248, w - mean = +0.3, lambda 0.3: authors 0.0445, exact 0.0379."""
    sched = Schedule.spindle(lam=0.3, T=512)
    info = torch.zeros(V)
    info[110], info[111] = 0.8, 0.2
    guess = torch.tensor([[110, 111]])
    ids = torch.full((1, 2), MASK)
    exact = SpindlePosteriorStep(sched, info, special_ids=BANNED).probability(ids, guess, 248.0, 256.0)[0, 0]
    authors = SpindlePosteriorStep(sched, info, reveal="authors", special_ids=BANNED).probability(
        ids, guess, 248.0, 256.0)[0, 0]
    assert abs(float(exact) - 0.03785) < 2e-5 and abs(float(authors) - 0.04445) < 2e-5
    assert float(authors_reveal_probability(torch.tensor([0.7]), 1.0, 0.5)[0]) == 1.0  # s = 0 reveals all


def test_spindle_posterior_does_not_freeze_positions_whose_argmax_is_banned():
    class LovesPad:
        vocab_size = V

        def __call__(self, ids):
            logits = torch.zeros(*ids.shape, V)
            logits[..., PAD] = 20.0  # the argmax is a banned id everywhere
            logits[..., 120] = 2.0
            return logits

    counts = torch.ones(V)
    counts[120] = 1e5
    info = token_information(counts, "code")
    revealed_before_last = []
    generate(dk.as_denoiser(LovesPad()), mask_id=MASK, batch_size=2, seq_len=12, steps=4,
             schedule=Schedule.spindle(lam=0.3, T=100), token_info=info, banned_ids=BANNED, progress=False,
             on_step=lambda k, ids, rev: revealed_before_last.append(int(rev.sum())) if k < 3 else None)
    assert sum(revealed_before_last) > 0


# ----------------------------------------------------------------------------- DiffusionBert and the cache
def _tiny_bert(time_design="tad"):
    from tests.model_fixtures import tiny_model

    return tiny_model(time_design).eval()


def test_diffusion_bert_drives_generate_directly():
    model = _tiny_bert("lte")
    vocab = model.vocab_size
    out = generate(model, mask_id=3, batch_size=2, seq_len=10, steps=4, banned_ids=[0, 1, 2, 3], progress=False)
    assert out.shape == (2, 10) and not bool((out == 3).any()) and out.device == model.device
    from dbert_model import DiffusionBertDenoiser

    again = generate(DiffusionBertDenoiser(model), mask_id=3, batch_size=2, seq_len=10, steps=4,
                     banned_ids=[0, 1, 2, 3], progress=False)
    assert torch.equal(out, again) and int(out.max()) < vocab


def _hf_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    return transformers.BertForMaskedLM(config).eval()


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("maker", ["hf", "tad", "lte"])
@pytest.mark.parametrize("strategy", ["posterior", "threshold"])
def test_cache_equals_no_cache_when_refreshed_every_call_or_whole(maker, mode, strategy):
    model = _hf_bert() if maker == "hf" else _tiny_bert(maker)
    mask = MASK if maker == "hf" else 3
    banned = BANNED if maker == "hf" else [0, 1, 2, 3]
    kw = dict(mask_id=mask, batch_size=3, seq_len=12, steps=8, strategy=strategy, banned_ids=banned, progress=False,
              seed=4, **({"threshold": 0.3} if strategy == "threshold" else {}))
    plain, s0 = generate(model, block_length=4, return_stats=True, **kw)
    fresh, s1 = generate(model, block_length=4, cache=mode, refresh_every=1, return_stats=True, **kw)
    assert torch.equal(plain, fresh) and s0.calls == s1.calls
    whole = generate(model, block_length=None, **kw)
    assert torch.equal(whole, generate(model, block_length=12, cache=mode, **kw))
    cached, s2 = generate(model, block_length=4, cache=mode, return_stats=True, **kw)  # the approximation
    assert not bool((cached == mask).any()) and s2.positions_forwarded < s0.positions_forwarded


def test_cached_block_pass_is_close_to_the_full_pass_when_nothing_changed():
    from dbert_kernels.cache import BlockCache

    model = _hf_bert()
    den = dk.as_denoiser(model)
    ids = torch.randint(104, V, (2, 12))
    ids[:, 4:8] = MASK
    rows = ids == MASK
    want = den(ids, rows=rows)
    for mode in ("prefix", "dual"):
        cache = BlockCache(mode, mask_id=MASK, batch_size=2)
        cache.open_block(4, 8)
        first = den.cached_logits(ids, None, rows, cache, torch.arange(2))  # refresh: the ordinary pass
        again = den.cached_logits(ids, None, rows, cache, torch.arange(2))  # block pass on cached keys/values
        assert torch.equal(first, want)
        assert torch.allclose(again, want, atol=1e-4)  # same inputs: equal up to float reassociation


def test_cache_refused_for_a_model_that_cannot_take_one():
    with pytest.raises(ValueError, match="cache"):
        generate(_tiny_bert("pte"), mask_id=3, batch_size=1, seq_len=8, steps=4, block_length=4, cache="dual",
                 banned_ids=[0, 1, 2, 3], progress=False)


@pytest.mark.parametrize("backend", [b for b in dk.available_backends("cpu") if b != "reference"])
@pytest.mark.parametrize("kw", [dict(strategy="threshold", threshold=0.3, confidence="margin"),
                                dict(strategy="threshold", threshold=0.3, confidence="neg_entropy", block_length=5),
                                dict(strategy="entropy_bound", gamma=1.0),
                                dict(strategy="topk", confidence="margin", gumbel_temperature=0.5)])
def test_same_seed_same_tokens_on_every_backend(backend, kw):
    base = dict(mask_id=MASK, batch_size=3, seq_len=14, steps=6, banned_ids=BANNED, progress=False, seed=9,
                temperature=0.9, top_k=40)
    want = generate(_den(), backend="reference", **base, **kw)
    try:
        got = generate(_den(), backend=backend, **base, **kw)
    except NotImplementedError as exc:  # a backend that does not compute entropy / margin yet says so
        pytest.skip(str(exc))
    assert torch.equal(got, want)


def test_topk_runs_only_the_rows_that_reveal_at_a_step():
    """A row whose count is 0 at a step (few free positions against the schedule) is not run;
    the tokens are those of running every row (the draws are keyed on the position)."""
    fixed = torch.full((2, 8), -1)
    fixed[1, :7] = 42  # row 1 has one free position: it reveals at one step only
    forwarded = []

    def watch(k, ids, revealed):
        forwarded.append(int(revealed.any(dim=1).sum()))

    kw = dict(mask_id=MASK, batch_size=2, seq_len=8, steps=8, strategy="topk", fixed=fixed, banned_ids=BANNED,
              progress=False, return_stats=True, seed=3)
    out, stats = generate(_den(), on_step=watch, **kw)
    assert stats.rows_forwarded == sum(forwarded) == 8 + 1
    # the same tokens as each row generated alone
    alone = [generate(_den(), **{**kw, "batch_size": 1, "fixed": fixed[r]})[0][0] for r in range(2)]
    assert torch.equal(out[0], alone[0])
    assert int(out[1, 7]) != MASK


def _llada_port(model, prompt: torch.Tensor, steps: int, gen_length: int, block_length: int, mask_id: int):
    """LLaDA's ``generate`` (its public generate.py: blocks from the prompt's end, steps split evenly
    over the blocks, low-confidence remasking, temperature 0, no guidance), written out here:
    the final ids, the positions revealed at each step and the model calls."""
    p_len = prompt.shape[1]
    x = torch.full((1, p_len + gen_length), mask_id, dtype=torch.long)
    x[:, :p_len] = prompt
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    revealed, calls = [], 0
    for nb in range(num_blocks):
        block_mask = x[:, p_len + nb * block_length: p_len + (nb + 1) * block_length] == mask_id
        n = block_mask.sum(dim=1, keepdim=True)
        transfer_counts = (n // per_block).repeat(1, per_block)
        for j in range(n.shape[0]):
            transfer_counts[j, : int(n[j, 0] % per_block)] += 1
        for i in range(per_block):
            mask_index = x == mask_id
            logits = model(x)
            calls += 1
            x0 = torch.argmax(logits, dim=-1)
            x0_p = torch.gather(torch.softmax(logits.to(torch.float64), dim=-1), -1, x0[..., None])[..., 0]
            x0_p[:, p_len + (nb + 1) * block_length:] = -math.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.tensor(-math.inf, dtype=torch.float64))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                transfer[j, torch.topk(confidence[j], k=int(transfer_counts[j, i])).indices] = True
            x[transfer] = x0[transfer]
            revealed.append(sorted(transfer[0].nonzero()[:, 0].tolist()))
    return x, revealed, calls


@pytest.mark.parametrize("prompt_len, steps", [(8, 16), (5, 16), (5, 8), (3, 4)])
def test_blocks_from_the_prompt_end_make_llada_decisions(prompt_len, steps):
    """Blocks laid from the prompt's end with the steps shared over the generation blocks: greedy
    top-k decoding equals the port of LLaDA's loop step by step (the positions revealed at each
    step, the model calls, the tokens), for prompt lengths that are and are not multiples of the
    block length (the counts per step divide evenly here: LLaDA's split of a remainder differs)."""
    g = torch.Generator().manual_seed(prompt_len)
    table = torch.randn(V, V, generator=g) * 3
    table[:, MASK] = -math.inf  # LLaDA's argmax never picks [MASK]; the sampler bans it

    def model(ids):  # logits from the left neighbour and the position
        left = torch.cat([ids[:, :1], ids[:, :-1]], dim=1)
        return table[left] + torch.randn(ids.shape[1], V, generator=torch.Generator().manual_seed(7))[None] * 0.5

    prompt = torch.randint(0, MASK, (1, prompt_len), generator=g)
    want, want_steps, want_calls = _llada_port(model, prompt, steps, 16, 8, MASK)
    got_steps = []
    got, stats = generate(model, mask_id=MASK, batch_size=1, seq_len=prompt_len + 16, steps=steps, strategy="topk",
                          temperature=0.0, prefix=prompt[0].tolist(), block_length=8, banned_ids=[], progress=False,
                          return_stats=True, on_step=lambda k, ids, rev: got_steps.append(rev[0].nonzero()[:, 0].tolist()))
    assert got_steps == want_steps
    assert stats.calls == want_calls == steps
    assert torch.equal(got, want)
