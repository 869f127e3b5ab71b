"""The field's decoders reproduced decision for decision.

Each test holds a port of a peer's public decoding loop (LLaDA's ``generate``, Fast-dLLM's
threshold and factor rules, the EB-sampler, LLaDA's classifier-free guidance), written out here
from their code, and compares it with :func:`dbert_kernels.generate` under the matching preset,
greedy: the tokens, the positions revealed at every step, and the model calls.

The models are deterministic functions of the ids (logits from the left neighbour, the position
and, for guidance, the first prompt token), with ``[MASK]``'s logit at ``-1e4`` so that the peers'
plain argmax never picks it (the sampler always bans it).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dbert_kernels as dk
from dbert_kernels import generate

V = 40
MASK = 39
PAD = 0


def _model(seed: int, prompt_sensitive: bool = False):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(V, V, generator=g) * 3
    position = torch.randn(64, V, generator=g) * 0.5
    first = torch.randn(V, V, generator=g)

    def model(ids: torch.Tensor) -> torch.Tensor:
        left = torch.cat([ids[:, :1], ids[:, :-1]], dim=1)
        logits = table[left] + position[: ids.shape[1]][None]
        if prompt_sensitive:  # the first token steers every position (masked in the unconditional copy)
            logits = logits + first[ids[:, :1]].expand(-1, ids.shape[1], -1)
        logits[..., MASK] = -1e4  # finite: the guidance subtracts two copies
        return logits

    return model


def _prompts(seed: int, lengths: list[int]) -> torch.Tensor:
    """``[B, P]`` prompts of the given lengths, left-padded with ``PAD`` (Fast-dLLM's batches)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    out = torch.full((len(lengths), width), PAD, dtype=torch.long)
    for row, n in enumerate(lengths):
        out[row, width - n:] = torch.randint(1, MASK, (n,), generator=g)
    return out


def _counts(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's ``get_num_transfer_tokens``."""
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    out = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        out[i, : remainder[i]] += 1
    return out


def _logits(model, x: torch.Tensor, prompt_index: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    if cfg_scale > 0.0:  # LLaDA: the prompt masked in a second copy, in the same batch
        un_x = x.clone()
        un_x[prompt_index] = MASK
        logits, un_logits = torch.chunk(model(torch.cat([x, un_x], dim=0)), 2, dim=0)
        return un_logits + (cfg_scale + 1) * (logits - un_logits)
    return model(x)


def _llada(model, prompt: torch.Tensor, steps: int, gen_length: int, block_length: int, cfg_scale: float = 0.0):
    """LLaDA's ``generate`` (low-confidence remasking, temperature 0): the ids, the positions each
    step revealed (per row) and the model calls."""
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), MASK, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt.clone()
    prompt_index = x != MASK
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps = steps // num_blocks
    revealed, calls = [], 0
    for num_block in range(num_blocks):
        start = prompt.shape[1] + num_block * block_length
        num_transfer_tokens = _counts(x[:, start:start + block_length] == MASK, steps)
        for i in range(steps):
            mask_index = x == MASK
            logits = _logits(model, x, prompt_index, cfg_scale)
            calls += 1
            x0 = torch.argmax(logits, dim=-1)
            p = F.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            x0_p[:, start + block_length:] = -math.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -math.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j, i]))
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
            revealed.append([row.nonzero()[:, 0].tolist() for row in transfer_index])
    return x, revealed, calls


def _fast_dllm(model, prompt: torch.Tensor, gen_length: int, block_length: int, *, threshold=None, factor=None):
    """Fast-dLLM's ``generate`` (no cache; ``get_transfer_index`` with a threshold or
    ``get_transfer_index_dynamic`` with a factor; temperature 0), on a batch of prompts."""
    x = torch.full((prompt.shape[0], prompt.shape[1] + gen_length), MASK, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt.clone()
    num_blocks = gen_length // block_length
    revealed, nfe = [], 0
    for num_block in range(num_blocks):
        start = prompt.shape[1] + num_block * block_length
        end = start + block_length
        while True:
            nfe += 1
            mask_index = x == MASK
            logits = model(x)
            mask_index[:, end:] = 0
            x0 = torch.argmax(logits, dim=-1)
            p = F.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -math.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            num_transfer_tokens = mask_index.sum(dim=1, keepdim=True)
            for j in range(confidence.shape[0]):
                if factor is None:
                    _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j]))
                    transfer_index[j, select_index] = True
                    for k in range(1, int(num_transfer_tokens[j])):
                        if confidence[j, select_index[k]] < threshold:
                            transfer_index[j, select_index[k]] = False
                    continue
                if int(num_transfer_tokens[j]) == 0:  # a finished row (their code indexes an empty list here)
                    continue
                ns = list(range(1, int(num_transfer_tokens[j]) + 1))
                threshs = [1 - factor / (n + 1) for n in ns]
                threshs[0] = -1
                sorted_conf = torch.sort(confidence[j][mask_index[j]], dim=-1, descending=True)[0]
                assert len(sorted_conf) == len(threshs)
                for top_i in range(len(threshs)):  # noqa: B007 - the loop variable is read after the loop
                    if sorted_conf[top_i] < threshs[top_i]:
                        break
                if top_i == 0 or top_i == len(threshs) - 1:
                    top_i += 1
                _, select_index = torch.topk(confidence[j], k=top_i)
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
            revealed.append([row.nonzero()[:, 0].tolist() for row in transfer_index])
            if (x[:, start:end] == MASK).sum() == 0:
                break
    return x, revealed, nfe


def _eb_sampler(model, prompt: torch.Tensor, gamma: float, gen_length: int, order: str = "entropy"):
    """The EB-sampler's ``generate_with_eb_sampler`` (temperature 0, no guidance). ``order``: the
    error proxy that sorts the masked positions; the published loop sorts by the entropy, and the
    paper's alternatives sort by the confidence or the margin (highest first) while the bound
    stays on the entropies."""
    x = torch.full((1, prompt.shape[1] + gen_length), MASK, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt.clone()
    revealed, calls = [], 0
    while (x == MASK).any():
        mask_index = x == MASK
        logits = model(x)
        calls += 1
        predicted_tokens = torch.argmax(logits, dim=-1)
        masked_logits = logits[mask_index]
        entropy = torch.distributions.Categorical(logits=masked_logits).entropy()
        probs = F.softmax(masked_logits.to(torch.float64), dim=-1)
        if order == "entropy":
            err_proxy = entropy
        elif order == "confidence":
            err_proxy = -probs.max(dim=-1).values
        else:
            top2 = probs.topk(2, dim=-1).values
            err_proxy = -(top2[:, 0] - top2[:, 1])
        masked_token_indices = mask_index.nonzero(as_tuple=True)[1]
        sorted_err_indices = torch.argsort(err_proxy)
        sorted_indices = masked_token_indices[sorted_err_indices]
        sorted_entropies = entropy[sorted_err_indices]
        acc_entropy = torch.cumsum(sorted_entropies, dim=0)
        cummax_entropy = torch.cummax(sorted_entropies, dim=0).values
        k = (acc_entropy - cummax_entropy <= gamma).sum()
        k = torch.clamp(k, min=1, max=len(sorted_indices))
        indices_to_unmask = sorted_indices[:k]
        x[0, indices_to_unmask] = predicted_tokens[0, indices_to_unmask]
        revealed.append([sorted(indices_to_unmask.tolist())])
    return x, revealed, calls


def _ours(model, prompt: torch.Tensor, gen_length: int, steps: int, strategy: str, **kw):
    got: list[list[list[int]]] = []
    ids, stats = generate(
        model, mask_id=MASK, batch_size=prompt.shape[0], seq_len=prompt.shape[1] + gen_length, steps=steps,
        strategy=strategy, temperature=0.0, banned_ids=[], prefix=prompt, progress=False, return_stats=True,
        on_step=lambda k, ids, rev: got.append([row.nonzero()[:, 0].tolist() for row in rev]), **kw,
    )
    return ids, got, stats.calls


@pytest.mark.parametrize("lengths, steps, block", [
    ([8], 16, 8),  # the prompt a multiple of the block length
    ([5], 6, 8),  # 8 masks over 3 steps per block: LLaDA's split 3, 3, 2
    ([3], 10, 16),  # one block, 16 masks over 10 steps
    ([5, 2], 4, 8),  # a batch: the same prompt length (left-padded), steps over 2 blocks
])
def test_llada_preset_makes_llada_decisions(lengths, steps, block):
    model = _model(len(lengths) * 10 + steps)
    prompt = _prompts(steps, lengths)
    want, want_steps, want_calls = _llada(model, prompt, steps, 16, block)
    got, got_steps, calls = _ours(model, prompt, 16, steps, "llada", block_length=block)
    assert got_steps == want_steps
    assert calls == want_calls == steps
    assert torch.equal(got, want)


def test_the_even_split_is_llada_s():
    """8 masks over 3 steps: 3, 3, 2 (the schedule's rounding gives 3, 2, 3)."""
    prompt = _prompts(0, [4])
    _, even, _ = _ours(_model(0), prompt, 8, 3, "topk", counts="even", block_length=8)
    _, schedule, _ = _ours(_model(0), prompt, 8, 3, "topk", block_length=8)
    assert [len(s[0]) for s in even] == [3, 3, 2]
    assert [len(s[0]) for s in schedule] == [3, 2, 3]


@pytest.mark.parametrize("cfg_scale", [0.5, 2.0])
def test_classifier_free_guidance_matches_llada(cfg_scale):
    model = _model(3, prompt_sensitive=True)
    prompt = _prompts(3, [6, 6])
    want, want_steps, want_calls = _llada(model, prompt, 8, 16, 8, cfg_scale=cfg_scale)
    got, got_steps, calls = _ours(model, prompt, 16, 8, "llada", block_length=8, cfg_scale=cfg_scale)
    assert got_steps == want_steps and calls == want_calls
    assert torch.equal(got, want)
    plain, _, _ = _ours(model, prompt, 16, 8, "llada", block_length=8)
    assert not torch.equal(plain, got)  # the guidance changes the text


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.9, 0.99])
def test_fast_dllm_threshold_batch_of_four_prompt_lengths(threshold):
    model = _model(int(threshold * 100))
    prompt = _prompts(1, [3, 7, 5, 1])  # left-padded to 7, as Fast-dLLM batches prompts
    want, want_steps, nfe = _fast_dllm(model, prompt, 24, 8, threshold=threshold)
    got, got_steps, calls = _ours(model, prompt, 24, 24, "fast-dllm", threshold=threshold, block_length=8)
    assert got_steps == want_steps
    assert calls == nfe
    assert torch.equal(got, want)


@pytest.mark.parametrize("factor", [0.5, 1.0, 2.0, 4.0])
def test_fast_dllm_factor_batch_of_four_prompt_lengths(factor):
    model = _model(int(factor * 10) + 1)
    prompt = _prompts(2, [2, 6, 4, 5])
    want, want_steps, nfe = _fast_dllm(model, prompt, 24, 8, factor=factor)
    got, got_steps, calls = _ours(model, prompt, 24, 24, "fast-dllm-factor", factor=factor, block_length=8)
    assert got_steps == want_steps
    assert calls == nfe
    assert torch.equal(got, want)


def test_factor_rule_edge_cases():
    """The dynamic threshold's corner cases, on hand-made confidences: the first always passes;
    stopping at the last index reveals all (Fast-dLLM's loop adds one there)."""
    rule = dk.strategies.FactorStep(1.0)
    in_play = torch.ones(1, 4, dtype=torch.bool)
    state = dk.StepState(ids=torch.full((1, 4), MASK), in_play=in_play, n_free=torch.tensor([4]), t=1.0, s=0.5,
                         offset=0, steps_left=100, row_index=torch.arange(4), budget=100)
    # the bars of the 2nd, 3rd and 4th most confident: 1 - 1/3, 1 - 1/4, 1 - 1/5
    assert rule.count(torch.tensor([[0.1, 0.05, 0.02, 0.01]]), state).tolist() == [1]
    assert rule.count(torch.tensor([[0.9, 0.7, 0.1, 0.01]]), state).tolist() == [2]
    assert rule.count(torch.tensor([[0.01, 0.9, 0.1, 0.7]]), state).tolist() == [2]  # sorted first
    assert rule.count(torch.tensor([[0.9, 0.8, 0.76, 0.01]]), state).tolist() == [4]  # broke at the last index
    assert rule.count(torch.tensor([[0.95, 0.9, 0.85, 0.81]]), state).tolist() == [4]
    assert dk.strategies.FactorStep(0.1).count(torch.tensor([[0.9, 0.8, 0.76, 0.01]]), state).tolist() == [1]


@pytest.mark.parametrize("order", ["entropy", "confidence", "margin"])
@pytest.mark.parametrize("gamma", [0.1, 1.0, 10.0])
def test_eb_sampler_orders(order, gamma):
    model = _model(int(gamma * 10) + len(order))
    prompt = _prompts(4, [5])
    want, want_steps, want_calls = _eb_sampler(model, prompt, gamma, 20, order)
    got, got_steps, calls = _ours(model, prompt, 20, 20, "eb-sampler", gamma=gamma, order=order)
    assert got_steps == want_steps
    assert calls == want_calls
    assert torch.equal(got, want)


def test_orders_change_the_decisions():
    prompt = _prompts(4, [5])
    runs = {order: _ours(_model(9), prompt, 20, 20, "eb-sampler", gamma=1.0, order=order)[1]
            for order in ("entropy", "confidence", "margin")}
    assert runs["entropy"] != runs["confidence"] or runs["entropy"] != runs["margin"]


def test_random_remasking_keeps_llada_counts_and_is_uniform():
    """LLaDA's ``remasking="random"`` draws its order from ``torch.rand``, so decisions cannot be
    compared; the counts per step are LLaDA's, and the first position revealed is uniform over
    the block (chi-square over 240 seeds, 8 cells)."""
    prompt = _prompts(5, [4])
    first = []
    for seed in range(240):
        _, got, _ = _ours(_model(5), prompt, 8, 8, "llada", confidence="random", block_length=8, seed=seed)
        assert [len(s[0]) for s in got] == [1] * 8
        first.append(got[0][0][0] - 4)
    counts = torch.bincount(torch.tensor(first), minlength=8).double()
    chi2 = float(((counts - 30.0) ** 2 / 30.0).sum())
    assert chi2 < 24.3  # 7 degrees of freedom, p = 0.001
    _, greedy, _ = _ours(_model(5), prompt, 8, 8, "llada", block_length=8)
    assert len({tuple(g[0]) for g in greedy}) == 8


def test_raw_scores_are_the_plain_float64_softmax():
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(0)) * 4
    tokens = logits.argmax(dim=1)
    p = torch.softmax(logits.double(), dim=1)
    prob, _ = dk.strategies.raw_scores(logits, tokens, "prob")
    margin, _ = dk.strategies.raw_scores(logits, tokens, "margin")
    neg, entropy = dk.strategies.raw_scores(logits, tokens, "neg_entropy", with_entropy=True)
    assert prob.dtype == torch.float64
    torch.testing.assert_close(prob, p.max(dim=1).values)
    top2 = p.topk(2, dim=1).values
    torch.testing.assert_close(margin, top2[:, 0] - top2[:, 1])
    torch.testing.assert_close(entropy, -(p * p.log()).sum(dim=1))
    torch.testing.assert_close(neg, torch.exp(-entropy))


def test_raw_and_filtered_confidence_differ_at_a_low_temperature():
    """At temperature 0.5 the filtered distribution is sharper: more positions pass 0.9."""
    model = _model(11)
    prompt = _prompts(11, [4])
    kw = dict(mask_id=MASK, batch_size=1, seq_len=36, steps=32, strategy="threshold", banned_ids=[],
              prefix=prompt, progress=False, return_stats=True, temperature=0.5, seed=1)
    _, filtered = generate(model, **kw)
    _, raw = generate(model, scores="raw", **kw)
    assert filtered.calls < raw.calls
