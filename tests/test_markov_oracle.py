"""The ground-truth Markov language and its exact (oracle) denoiser (dbert_kernels.markov).

(a) the oracle's conditionals equal brute-force enumeration over all completions; (b) one token
per step through ``generate`` reproduces the chain's sequence distribution (G-test, with a power
check that few-step decoding and confidence-chosen order are rejected); (c) the metrics equal
their exact values on the chain's own samples; plus every strategy runs on the oracle and the
``python -m bench --only oracle --quick`` table.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import dbert_kernels as dk
from dbert_kernels.markov import MarkovChain, OracleDenoiser, distinct_n, sampler_metrics

from .stats import chi2_sf

F64 = torch.float64


def _all_sequences(v: int, length: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(v), repeat=length)), dtype=torch.int64)


def _joint(chain: MarkovChain, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    seqs = _all_sequences(chain.vocab_size, length)
    p = chain.init[seqs[:, 0]].clone()
    for i in range(1, length):
        p *= chain.trans[seqs[:, i - 1], seqs[:, i]]
    return seqs, p


@pytest.fixture(scope="module")
def tiny() -> MarkovChain:
    chain = MarkovChain.random(4, seed=3, zipf=1.0, sparsity=0.4, min_support=1)
    assert bool((chain.trans == 0).any()), "the tiny chain should have impossible transitions"
    return chain


def test_random_chain_is_seeded_sparse_and_normalised() -> None:
    a = MarkovChain.random(64, seed=1, sparsity=0.5)
    b = MarkovChain.random(64, seed=1, sparsity=0.5)
    assert torch.equal(a.trans, b.trans) and torch.equal(a.init, b.init)
    assert a.trans.dtype == F64 and torch.allclose(a.trans.sum(1), torch.ones(64, dtype=F64))
    zeros = float((a.trans == 0).double().mean())
    assert 0.3 < zeros < 0.6
    assert bool(((a.trans > 0).sum(1) >= 2).all())  # min_support
    assert not torch.equal(a.trans, MarkovChain.random(64, seed=2).trans)
    with pytest.raises(ValueError):
        MarkovChain(torch.tensor([0.5, 0.6]), torch.eye(2))


def test_exact_quantities_equal_enumeration(tiny: MarkovChain) -> None:
    length = 5
    seqs, p = _joint(tiny, length)
    assert abs(float(p.sum()) - 1) < 1e-12
    ll = tiny.log_likelihood(seqs)
    assert torch.equal(torch.isinf(ll), p == 0)
    assert torch.allclose(ll.exp(), p, rtol=0, atol=1e-15)
    h = float(-(p[p > 0] * p[p > 0].log()).sum()) / length
    assert abs(tiny.entropy_rate(length) - h) < 1e-12
    v = tiny.vocab_size
    marg = torch.stack([torch.bincount(seqs[:, i], weights=p, minlength=v) for i in range(length)])
    assert torch.allclose(tiny.marginals(length), marg, atol=1e-14)
    pairs = torch.stack([torch.bincount(seqs[:, i] * v + seqs[:, i + 1], weights=p, minlength=v * v).view(v, v)
                         for i in range(length - 1)])
    assert torch.allclose(tiny.bigram_marginals(length, average=False), pairs, atol=1e-14)
    assert torch.allclose(tiny.bigram_marginals(length), pairs.mean(0), atol=1e-14)


MASK_PATTERNS = [
    "MMMMM", "vMMMM", "MMMMv", "MvMvM", "vMMvM", "MMvMM", "vMvMv", "vvMvv", "MvvvM", "vMMMv",
]


@pytest.mark.parametrize("pattern", MASK_PATTERNS)
def test_conditionals_equal_brute_force(tiny: MarkovChain, pattern: str) -> None:
    """Every masked position's conditional given the visible tokens, for every consistent
    assignment of the visible tokens, equals enumeration over all completions (1e-9, float64);
    impossible tokens get exactly -inf."""
    length = len(pattern)
    seqs, p = _joint(tiny, length)
    masked_pos = [i for i, ch in enumerate(pattern) if ch == "M"]
    vis_pos = [i for i, ch in enumerate(pattern) if ch == "v"]
    oracle = OracleDenoiser(tiny)
    v = tiny.vocab_size
    checked = 0
    for vis_vals in itertools.product(range(v), repeat=len(vis_pos)):
        match = torch.ones(len(seqs), dtype=torch.bool)
        for j, val in zip(vis_pos, vis_vals, strict=True):
            match &= seqs[:, j] == val
        z = p[match].sum()
        if z == 0:
            continue  # no completion: undefined (see the inconsistent test)
        ids = torch.full((1, length), oracle.mask_id)
        for j, val in zip(vis_pos, vis_vals, strict=True):
            ids[0, j] = val
        logp = oracle.log_probs(ids)
        for r, i in enumerate(masked_pos):
            want = torch.bincount(seqs[match, i], weights=p[match], minlength=v) / z
            got = logp[r].exp()
            assert torch.equal(want == 0, torch.isneginf(logp[r]))
            assert float((got - want).abs().max()) < 1e-9
        checked += 1
    assert checked > 0 and oracle.inconsistent == 0


def test_oracle_logits_interface(tiny: MarkovChain) -> None:
    oracle = OracleDenoiser(tiny)
    assert oracle.vocab_size == tiny.vocab_size + 1 and oracle.mask_id == tiny.vocab_size
    ids = torch.tensor([[0, 4, 4, 1, 4], [4, 4, 2, 4, 4]])
    rows = ids == 4
    out = oracle(ids, rows=rows)
    assert out.shape == (int(rows.sum()), 5) and out.dtype == torch.float32
    assert bool(torch.isneginf(out[:, -1]).all())
    assert torch.allclose(out[:, :-1].double(), oracle.log_probs(ids), atol=1e-6)
    full = oracle(ids)  # every position: a visible one gets its own token with probability 1
    assert full.shape == (2, 5, 5)
    assert float(full[0, 0, 0]) == 0.0 and bool(torch.isneginf(full[0, 0, 1:]).all())
    assert oracle.calls == 2


def test_inconsistent_visible_tokens_fall_back_and_are_counted() -> None:
    trans = torch.tensor([[0.0, 1.0], [0.5, 0.5]], dtype=F64)  # 0 -> 0 impossible
    chain = MarkovChain(torch.tensor([0.5, 0.5], dtype=F64), trans)
    oracle = OracleDenoiser(chain)
    ids = torch.tensor([[0, 2, 0]])  # x1 must be 1 after 0, but 1 -> 0 is fine: consistent
    assert oracle.log_probs(ids)[0].exp().tolist() == [0.0, 1.0] and oracle.inconsistent == 0
    chain2 = MarkovChain(torch.tensor([0.5, 0.5], dtype=F64), torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=F64))
    o2 = OracleDenoiser(chain2)
    logp = o2.log_probs(torch.tensor([[0, 2, 0]]))  # nothing reaches 0: no completion
    assert o2.inconsistent == 1 and logp[0].exp().tolist() == [0.0, 1.0]  # left context: T[0]


# ----------------------------------------------------------------- (b) sequence distribution
def _g_test(samples: torch.Tensor, chain: MarkovChain) -> float:
    """G-test p-value of the sequence frequencies against the chain (0 if an impossible one occurs)."""
    v, length = chain.vocab_size, samples.shape[1]
    seqs, p = _joint(chain, length)
    code = torch.zeros(len(samples), dtype=torch.int64)
    for i in range(length):
        code = code * v + samples[:, i]
    counts = torch.bincount(code, minlength=v**length).to(F64)
    if bool((counts[p == 0] > 0).any()):
        return 0.0
    keep = p > 0
    obs, exp = counts[keep], p[keep] * len(samples)
    g = 2 * float(torch.special.xlogy(obs, obs / exp).sum())
    return chi2_sf(g, int(keep.sum()) - 1)


@pytest.fixture(scope="module")
def small() -> MarkovChain:
    return MarkovChain.random(3, seed=0, zipf=1.5, sparsity=0.3, min_support=1)


N_SEQ = 4000


def _gen(chain: MarkovChain, **kw) -> torch.Tensor:
    oracle = OracleDenoiser(chain)
    out = dk.generate(oracle, mask_id=oracle.mask_id, batch_size=N_SEQ, seq_len=4, banned_ids=[],
                      progress=False, **kw)
    assert oracle.inconsistent == 0 or kw.get("steps", 16) < 4
    return out


@pytest.mark.parametrize("kw", [
    dict(steps=4, strategy="topk", confidence="margin"),
    dict(steps=4, strategy="topk", confidence="neg_entropy", block_length=2),
    dict(steps=4, strategy="threshold", threshold=1.0, max_per_step=1, confidence="margin"),
], ids=["topk-margin", "topk-entropy-blocks", "threshold-one-per-step"])
def test_one_token_per_step_reproduces_the_chain(small: MarkovChain, kw: dict) -> None:
    pval = _g_test(_gen(small, seed=11, **kw), small)
    assert pval > 1e-3, pval


def test_g_test_has_power(small: MarkovChain) -> None:
    """The same test accepts the chain's own samples and rejects wrong distributions: all
    positions at once (the product of the marginals), two steps, and one token per step in the
    order of the sampled token's probability (confidence="prob": the choice depends on the draw)."""
    assert _g_test(small.sample(N_SEQ, 4, seed=5), small) > 1e-3
    marg = small.marginals(4)
    indep = torch.stack([torch.multinomial(marg[i], N_SEQ, replacement=True,
                                           generator=torch.Generator().manual_seed(i)) for i in range(4)], 1)
    assert _g_test(indep, small) < 1e-6
    assert _g_test(_gen(small, seed=11, steps=1, strategy="topk"), small) < 1e-6
    assert _g_test(_gen(small, seed=11, steps=2, strategy="topk", confidence="margin"), small) < 1e-6
    assert _g_test(_gen(small, seed=11, steps=4, strategy="topk", confidence="prob"), small) < 1e-6


# ----------------------------------------------------------------- (c) metrics
def test_metrics_on_the_chains_own_samples() -> None:
    chain = MarkovChain.random(16, seed=4, sparsity=0.5)
    length = 32
    seqs = chain.sample(3000, length, seed=9)
    m = sampler_metrics(chain, seqs)
    assert m["impossible_seq_rate"] == 0.0 and m["impossible_transition_rate"] == 0.0
    assert abs(m["nll_gap"]) < 4 * m["nll_se"], m
    assert abs(m["nll_per_token"] - m["entropy_rate"]) < 4 * m["nll_se"]
    # bigram TV shrinks like 1/sqrt(n): the exact marginals are the limit
    small = sampler_metrics(chain, seqs[:300])["bigram_tv"]
    assert m["bigram_tv"] < 0.06 and m["bigram_tv"] < 0.5 * small
    # per-position unigram frequencies equal the exact marginals within sampling error
    freq = torch.stack([torch.bincount(seqs[:, i], minlength=16) for i in range(length)]).double() / len(seqs)
    marg = chain.marginals(length)
    assert float(((freq - marg).abs() / (marg * (1 - marg) / len(seqs)).sqrt().clamp_min(1e-12)).max()) < 5.5


def test_metrics_detect_impossible_and_independent_samples() -> None:
    chain = MarkovChain.random(16, seed=4, sparsity=0.5)
    length = 32
    marg = chain.marginals(length)
    gen = torch.Generator().manual_seed(0)
    indep = torch.stack([torch.multinomial(marg[i], 2000, replacement=True, generator=gen) for i in range(length)], 1)
    m = sampler_metrics(chain, indep)
    zero = (chain.trans == 0).double()
    zero_mass = sum(float(marg[i] @ zero @ marg[i + 1]) for i in range(length - 1)) / (length - 1)
    assert abs(m["impossible_transition_rate"] - zero_mass) < 0.02
    assert m["impossible_seq_rate"] > 0.99
    assert m["bigram_tv"] > 3 * sampler_metrics(chain, chain.sample(2000, length, seed=1))["bigram_tv"]
    assert m["nll_gap"] > 0.1


def test_distinct_n() -> None:
    seqs = torch.tensor([[1, 2, 1, 2], [1, 2, 3, 4]])
    assert distinct_n(seqs, 1) == 4 / 8
    assert distinct_n(seqs, 2) == 4 / 6  # (1,2) (2,1) (2,3) (3,4)
    assert distinct_n(seqs, 4) == 1.0
    assert math.isnan(distinct_n(seqs, 5))


# ----------------------------------------------------------------- every strategy on the oracle
@pytest.mark.parametrize("strategy", dk.STRATEGIES)
@pytest.mark.parametrize("block_length", [None, 8])
def test_every_strategy_runs_on_the_oracle(strategy: str, block_length: int | None) -> None:
    chain = MarkovChain.random(32, seed=0)
    oracle = OracleDenoiser(chain)
    out, stats = dk.generate(oracle, mask_id=oracle.mask_id, batch_size=8, seq_len=24, steps=6, strategy=strategy,
                             banned_ids=[], block_length=block_length, seed=1, progress=False, return_stats=True)
    assert out.shape == (8, 24) and int(out.min()) >= 0 and int(out.max()) < 32
    assert stats.calls == oracle.calls and 1 <= stats.calls <= 6


def test_cache_needs_an_encoder() -> None:
    oracle = OracleDenoiser(MarkovChain.random(8))
    with pytest.raises(ValueError, match="block cache"):
        dk.generate(oracle, mask_id=oracle.mask_id, seq_len=8, steps=2, banned_ids=[], block_length=4,
                    cache="prefix", progress=False)


# ----------------------------------------------------------------- the bench table
def test_bench_oracle_quick(tmp_path) -> None:
    import json

    from bench.__main__ import main

    main(["--only", "oracle", "--quick", "--out", str(tmp_path), "--no-progress", "--threads", "1"])
    res = json.loads((tmp_path / "oracle_cpu.json").read_text())
    md = (tmp_path / "oracle_cpu.md").read_text()
    assert "exact" in md and "posterior" in md
    for block in res["oracle"]["lengths"]:
        rows = block["rows"]
        names = {r["strategy"] for r in rows}
        assert {"exact", "posterior", "topk", "threshold", "entropy_bound", "chain samples"} <= names
        exact = next(r for r in rows if r["strategy"] == "exact")
        assert exact["impossible_seq_rate"] == 0.0
        assert exact["calls_per_sequence"] == block["length"]
    assert "loadavg_before" in res and "loadavg_after" in res
