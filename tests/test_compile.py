"""A sampling step with tensor seed / offset under ``torch.compile(fullgraph=True)``.

The public op with ``validate=False`` needs no host synchronisation and no graph break: on the
reference backend the whole step is traced (dense over rows, the same draws), on the native
backend the C++ op is one opaque node (its fake implementation gives the shapes). The compiled
step must give what the eager step gives, for new seed / offset values without recompiling.
"""

from __future__ import annotations

import pytest
import torch

import dbert_kernels as dk

from .backends_under_test import require_backend


def _step(logits, ids, prob, seed, offset, backend, banned=(0, 1)):
    return dk.sample_absorbing(
        logits, ids, mask_id=3, unmask_prob=prob, temperature=0.8, top_k=20, top_p=0.9,
        banned_ids=banned, seed=seed, offset=offset, return_entropy=True, return_margin=True,
        validate=False, backend=backend,
    )


@pytest.mark.parametrize("backend", ["reference", pytest.param("native", marks=pytest.mark.native)])
def test_sampling_step_compiles_fullgraph_with_tensor_seed(backend):
    require_backend(backend)
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(24, 97, generator=g) * 2
    ids = torch.randint(4, 97, (24,), generator=g)
    ids[::2] = 3
    prob = torch.full((24,), 0.7)
    # aot_eager: dynamo's full-graph capture and AOT autograd's tracing, without inductor's
    # (slow) code generation
    compiled = torch.compile(
        lambda lg, i, p, s, o: _step(lg, i, p, s, o, backend), fullgraph=True, dynamic=False,
        backend="aot_eager",
    )
    for n, (seed, offset) in enumerate([(5, 0), (2**63 + 9, 3), (123, 4)]):
        seed_t = torch.tensor(seed - 2**64 if seed >= 2**63 else seed, dtype=torch.int64)
        offset_t = torch.tensor(offset, dtype=torch.int64)
        with torch._dynamo.config.patch(error_on_recompile=n > 0):  # new values, same graph
            got = compiled(logits, ids, prob, seed_t, offset_t)
        want = _step(logits, ids, prob, seed, offset, backend)
        assert torch.equal(got[0], want[0])
        for a, b in zip(got[1:], want[1:], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, equal_nan=True)


@pytest.mark.cuda
def test_public_sampling_step_is_captured_in_a_cuda_graph():
    """The public op (Triton on CUDA) with device seed / offset tensors, a device bool mask of
    banned ids and ``validate=False`` records into a CUDA graph (no host copy or sync inside);
    replays with new offsets equal the eager calls."""
    dev = require_backend("triton", "cuda")
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(4096, 30522, generator=g) * 2).to(device=dev, dtype=torch.bfloat16)
    ids = torch.randint(4, 30522, (4096,), generator=g).to(dev)
    ids[::2] = 3
    prob = torch.full((4096,), 0.7, device=dev)
    seed_t = torch.tensor(7, dtype=torch.int64, device=dev)
    offset_t = torch.tensor(0, dtype=torch.int64, device=dev)
    banned = torch.zeros(30522, dtype=torch.bool, device=dev)
    banned[:2] = True
    _step(logits, ids, prob, seed_t, offset_t, "triton", banned)  # compile the kernels before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = _step(logits, ids, prob, seed_t, offset_t, "triton", banned)
    for offset in (3, 4):
        offset_t.fill_(offset)
        graph.replay()
        want = _step(logits, ids, prob, 7, offset, "triton", banned)
        assert torch.equal(static[0], want[0])
        for a, b in zip(static[1:], want[1:], strict=True):
            torch.testing.assert_close(a, b, equal_nan=True)
