"""Every backend on every device against the reference: same inputs, same seed, same results.

One suite, parametrised over :func:`tests.backends_under_test.backend_device_params`: each CPU
backend on small, ragged inputs (the Triton kernels under the interpreter), each CUDA backend on
production shapes (V = 30522, thousands of rows, bf16). Masks, greedy and sampled tokens (the same
Philox stream), top-k unmasking positions, entropy and margin must be equal; confidences agree to
float32 rounding. Inputs are ragged (vocabularies that are not multiples of the vector width, -inf
logits, banned ids, ties, strided rows, int32 ids) and come in float32 / bfloat16 / float16. On a
GPU, whose log/exp may differ from the CPU's by an ulp, a Gumbel near-tie may pick the other token
(at most two rows per call) and a spindle draw may fall on the other side of its keep probability
(only within float rounding of it).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import dbert_kernels as dk
from dbert_kernels import random as rnd
from dbert_kernels import reference as ref
from dbert_kernels.backends import resolve_backend
from dbert_kernels.params import SamplingParams
from tests.backends_under_test import backend_device_params, require_backend, shapes
from tests.stats import entropy_of, filtered_distribution

pytestmark = [
    pytest.mark.parametrize("backend, device", backend_device_params()),
    # NumPy warnings of the Triton interpreter on -inf arithmetic that the kernels mask out
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),
]

SEEDS = [0, 12345, (1 << 32) + 7, (1 << 63) + 99, (1 << 64) - 1]
MASK = 103


@pytest.fixture
def dev(backend: str, device: str) -> torch.device:
    return require_backend(backend, device)


def _logits(rows: int, vocab: int, seed: int, dtype: torch.dtype = torch.float32, scale: float = 3.0,
            dev: torch.device | str = "cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, vocab, generator=gen) * scale
    x[torch.rand(rows, vocab, generator=gen) < 0.02] = float("-inf")  # some impossible tokens
    return x.to(dtype).to(dev)


def _assert_same_draws(dev: torch.device, tok, conf, want_tok, want_conf, case=None) -> None:
    """Equal tokens and close confidences (on a GPU: up to two Gumbel near-ties per call)."""
    same = tok == want_tok
    if dev.type == "cpu":
        assert bool(same.all()), case
        torch.testing.assert_close(conf, want_conf, rtol=2e-5, atol=1e-6)
    else:
        assert int((~same).sum()) <= 2, case
        # at V = 30522 the fp32 top-p mass sums (different orders) may keep or drop one boundary
        # token of probability ~1e-4, which moves the normaliser by as much
        torch.testing.assert_close(conf[same], want_conf[same], rtol=2e-3, atol=1e-6)


SAMPLE_CASES = [
    # (rows, vocab, temperature, top_k, top_p)
    (37, 7, 1.0, None, None),
    (64, 1000, 1.0, None, None),
    (50, 1003, 0.0, None, None),
    (41, 517, 0.7, 5, None),
    (33, 1000, 1.3, None, 0.9),
    (29, 999, 0.5, 40, 0.6),
    (30, 300, 2.0, 299, None),
    (30, 300, 1.0, 1, None),
    (20, 4099, 1.0, 700, None),  # top-k above the heap limit (nth_element path)
    (25, 257, 0.05, None, 0.3),
    (31, 211, 0.0, 7, 0.5),  # greedy with filters
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("case", SAMPLE_CASES, ids=[f"R{c[0]}-V{c[1]}-T{c[2]}-k{c[3]}-p{c[4]}" for c in SAMPLE_CASES])
def test_sample_equals_reference(backend: str, dev: torch.device, case: tuple, dtype: torch.dtype) -> None:
    rows, vocab, temperature, top_k, top_p = case
    if dev.type == "cuda":
        rows, vocab = 4096, 30522
    logits = _logits(rows, vocab, seed=rows * vocab, dtype=dtype, dev=dev)
    banned = [0, vocab // 2, vocab - 1] if vocab > 3 else []
    kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, banned_ids=banned, seed=2**40 + 7, offset=3)
    ref_tok, ref_conf = dk.sample(logits, backend="reference", **kwargs)
    tok, conf = dk.sample(logits, backend=backend, **kwargs)
    _assert_same_draws(dev, tok, conf, ref_tok, ref_conf)
    assert not bool(torch.isin(tok, torch.tensor(banned, dtype=torch.int64, device=dev)).any())


ABSORBING_CONFIGS = [  # temperature, top_k, top_p
    (1.0, None, None),
    (0.7, 40, None),
    (1.3, None, 0.8),
    (0.5, 25, 0.9),
    (0.0, None, None),
    (0.0, 7, 0.5),
    (2.0, 1, None),
]


def _absorbing_case(vocab: int, rows: int, dtype: torch.dtype, seed: int, dev: torch.device):
    logits = _logits(rows, vocab, seed, dtype, scale=2.5, dev=dev)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(MASK + 1, vocab, (rows,), generator=g)
    ids[torch.rand(rows, generator=g) < 0.7] = MASK
    prob = torch.rand(rows, generator=g).clamp(min=0.3)
    row_index = torch.randperm(rows * 3, generator=g)[:rows]
    return logits, ids.to(dev), prob.to(dev), row_index.to(dev)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_sample_absorbing_equals_reference(backend: str, device: str, dev: torch.device, dtype: torch.dtype) -> None:
    """Partly masked ids, per-row reveal probabilities, global row ids, every filter."""
    for c, (vocab, rows) in enumerate(shapes(device, [(1003, 90), (333, 61)], [(30522, 4096)])):
        logits, ids, prob, row_index = _absorbing_case(vocab, rows, dtype, c, dev)
        for temperature, top_k, top_p in ABSORBING_CONFIGS:
            kwargs = dict(mask_id=MASK, unmask_prob=prob, temperature=temperature, top_k=top_k, top_p=top_p,
                          banned_ids=[0, 101, 102], seed=SEEDS[c + 1], offset=9, row_index=row_index)
            want_tok, want_conf = dk.sample_absorbing(logits, ids, backend="reference", **kwargs)
            tok, conf = dk.sample_absorbing(logits, ids, backend=backend, **kwargs)
            revealed = (ids == MASK) & (want_tok != MASK)
            assert bool(revealed.any()) and bool((ids == MASK)[~revealed].any())  # both outcomes occur
            assert not bool(((tok == MASK) & revealed).any())
            _assert_same_draws(dev, tok, conf, want_tok, want_conf, (temperature, top_k, top_p))


def test_sample_ties(backend: str, dev: torch.device) -> None:
    """Integer logits with many exact ties: greedy takes the lower id, top-k keeps all ties; rows
    of 9000 have their ties in several blocks of the streamed kernel (2048 or 4096 wide)."""
    gen = torch.Generator().manual_seed(3)
    for rows, vocab in ((64, 97), (16, 9000)):
        logits = torch.randint(-3, 3, (rows, vocab), generator=gen).float().to(dev)
        for kwargs in (dict(temperature=0.0), dict(temperature=1.0, top_k=3), dict(temperature=0.0, top_p=0.5),
                       dict(temperature=1.0, top_p=0.4)):
            ref_out = dk.sample(logits, banned_ids=[], seed=1, backend="reference", **kwargs)
            out = dk.sample(logits, banned_ids=[], seed=1, backend=backend, **kwargs)
            _assert_same_draws(dev, out[0], out[1], ref_out[0], ref_out[1], (vocab, kwargs))


def test_sample_bert_vocabulary(backend: str, dev: torch.device) -> None:
    """The real size: V = 30522, default banned ids (BERT's specials); 4096 bf16 rows on a GPU."""
    rows, dtype = (48, torch.float32) if dev.type == "cpu" else (4096, torch.bfloat16)
    logits = _logits(rows, 30522, seed=1, scale=2.0, dtype=dtype, dev=dev)
    for kwargs in (dict(temperature=1.0), dict(temperature=0.8, top_k=30), dict(temperature=1.0, top_p=0.95)):
        ref_out = dk.sample(logits, seed=3, offset=1, backend="reference", **kwargs)
        out = dk.sample(logits, seed=3, offset=1, backend=backend, **kwargs)
        _assert_same_draws(dev, out[0], out[1], ref_out[0], ref_out[1], kwargs)


def test_sample_strided_and_int32_inputs(backend: str, dev: torch.device) -> None:
    """Logits rows with a stride larger than V (a slice) and int32 ids give the same draws."""
    vocab, rows = (250, 30) if dev.type == "cpu" else (30522, 1024)
    logits = _logits(rows, vocab + 17, 8, torch.float16, scale=2.5, dev=dev)[:, :vocab]
    ids = torch.full((rows,), MASK, dtype=torch.int32, device=dev)
    ids[::3] = 200
    kw = dict(mask_id=MASK, temperature=0.9, top_k=50, seed=77, offset=3)
    got = dk.sample_absorbing(logits, ids, backend=backend, **kw)
    want = dk.sample_absorbing(logits.contiguous(), ids.long(), backend="reference", **kw)
    _assert_same_draws(dev, got[0], got[1], want[0], want[1])


# temperature, top_k, top_p: cases that take each path of the Triton kernel (few candidates:
# compacted into the slots; many: bisection sweeps; no filter: the drawing sweep)
KERNEL_PATHS = [
    (0.7, 5, None),  # top-k: compacted
    (1.0, 297, None),  # top-k keeping nearly all: too many candidates, bisection
    (1.3, None, 0.9),  # top-p: compacted or bisection, by row
    (0.5, 40, 0.6),  # both
    (1.0, None, None),  # no filter at T = 1
    (0.05, None, None),  # no filter at low T
    (0.0, 7, 0.5),  # greedy with filters
]


def _kernel_path_inputs(dev: torch.device, dtype: torch.dtype, seed: int, banned_at: Callable[[int], list[int]]):
    """Logits, banned ids (``banned_at(vocab)``), unmask probabilities (all 1) and row ids for the
    ``KERNEL_PATHS`` tests."""
    vocab, rows = (300, 37) if dev.type == "cpu" else (30522, 2048)
    logits = _logits(rows, vocab, seed, dtype, scale=2.5, dev=dev)
    banned = torch.zeros(vocab, dtype=torch.bool, device=dev)
    banned[banned_at(vocab)] = True
    return logits, banned, torch.ones(rows, device=dev), torch.arange(rows, device=dev)


def _path_params(banned: torch.Tensor):
    """(case, SamplingParams with entropy and margin) of each of ``KERNEL_PATHS``."""
    for temperature, top_k, top_p in KERNEL_PATHS:
        yield (temperature, top_k, top_p), SamplingParams.create(
            temperature=temperature, top_k=top_k, top_p=top_p, banned=banned, with_entropy=True, with_margin=True)


def _triton_sample(logits, prob, banned, row_index, params: SamplingParams):
    """The Triton sampling launcher on the inputs of ``_kernel_path_inputs`` (seed 5, offset 3)."""
    from dbert_kernels.random import rng_tensor
    from dbert_kernels.triton_backend.sampling import launch_sample

    return launch_sample(logits, None, prob, banned, row_index, rng_tensor(5, 3, logits.device), -1,
                         params.inv_temperature, params.greedy, params.top_k, params.top_p, True, True)


#: Slot counts of the Triton kernel's compacted path: the default, and one so small that most
#: filtered rows take the bisection sweeps instead.
SLOT_COUNTS = [None, 16]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_entropy_and_margin_equal_reference(backend: str, dev: torch.device, dtype: torch.dtype,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens, confidence, entropy and margin equal the reference's bit for bit (on the CPU).

    The Triton backend is run with its default slots and with so few slots that the filtered rows
    take the bisection sweeps, so that both of its paths are compared on every case.
    """
    from dbert_kernels.triton_backend import sampling

    logits, banned, prob, row_index = _kernel_path_inputs(dev, dtype, 21, lambda v: [0, v // 2])
    impl = resolve_backend(backend, dev)[1]
    for path, params in _path_params(banned):
        want = ref.sample(logits, None, prob, row_index, -1, params, 5, 3)
        runs = {}
        if backend == "triton":
            for slots in SLOT_COUNTS:
                with monkeypatch.context() as patch:
                    if slots is not None:
                        patch.setattr(sampling, "SLOTS", slots)
                    runs[f"slots={slots or sampling.SLOTS}"] = _triton_sample(logits, prob, banned, row_index, params)
        else:
            runs[backend] = impl.sample(logits, None, prob, row_index, -1, params, 5, 3)
        for name, got in runs.items():
            case = (*path, name)
            if dev.type == "cpu":
                for g, w in zip(got, want, strict=True):
                    assert torch.equal(g, w), case
            else:  # GPU log/exp may move a Gumbel near-tie by one ulp
                assert int((got[0] != want[0]).sum()) <= 2, case


@pytest.mark.parametrize("n_programs", [1, 3])
def test_triton_persistent_loop_equals_reference(backend: str, dev: torch.device, n_programs: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The persistent kernel with fewer programs than tiles (each program loops over several tiles
    and reuses its slots) gives the reference's tokens on every path; confidence, entropy and
    margin agree to rounding."""
    if backend != "triton" or dev.type != "cpu":
        pytest.skip("the interpreter's grid setting of the Triton kernel")
    from dbert_kernels.triton_backend import sampling

    monkeypatch.setattr(sampling, "INTERPRETED_PROGRAMS", n_programs)
    monkeypatch.setattr(sampling, "launch_shape", lambda n_rows, vocab: (4, 128, 4))  # 10 tiles of 4 rows
    logits, banned, prob, row_index = _kernel_path_inputs(dev, torch.bfloat16, 22, lambda v: [1, v - 1])
    for path, params in _path_params(banned):
        want = ref.sample(logits, None, prob, row_index, -1, params, 5, 3)
        got = _triton_sample(logits, prob, banned, row_index, params)
        case = (*path, n_programs)
        assert torch.equal(got[0], want[0]), case
        for g, w in zip(got[1:], want[1:], strict=True):
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7, equal_nan=True, msg=str(case))


def test_entropy_matches_filtered_distribution(backend: str, dev: torch.device) -> None:
    """The entropy output is that of the filtered, renormalised distribution (float64 check)."""
    vocab, rows = (517, 33) if dev.type == "cpu" else (30522, 1024)
    logits = _logits(rows, vocab, 2, scale=2.5, dev=dev)
    banned = torch.zeros(vocab, dtype=torch.bool, device=dev)
    banned[:4] = True
    prob = torch.ones(rows, device=dev)
    row_index = torch.arange(rows, device=dev)
    impl = resolve_backend(backend, dev)[1]
    for temperature, top_k, top_p in [(0.9, None, None), (1.2, 30, 0.85)]:
        params = SamplingParams.create(temperature=temperature, top_k=top_k, top_p=top_p, banned=banned,
                                       with_entropy=True)
        _, _, ent, _ = impl.sample(logits, None, prob, row_index, -1, params, 5, 0)
        want = entropy_of(filtered_distribution(logits, banned, temperature, top_k, top_p))
        torch.testing.assert_close(ent.double(), want, rtol=1e-4, atol=1e-5)


def test_sample_never_reads_rows_it_does_not_sample(backend: str, dev: torch.device) -> None:
    vocab, rows = (301, 40) if dev.type == "cpu" else (30522, 2048)
    logits, ids, prob, row_index = _absorbing_case(vocab, rows, torch.float32, 7, dev)
    reveal = ref.reveal_rows(ids == MASK, prob, row_index, 3, 4)
    poisoned = logits.clone()
    poisoned[~reveal] = float("nan")
    kw = dict(mask_id=MASK, unmask_prob=prob, seed=3, offset=4, row_index=row_index, validate=False)
    tok, conf = dk.sample_absorbing(poisoned, ids, backend=backend, **kw)
    want_tok, want_conf = dk.sample_absorbing(logits, ids, backend="reference", **kw)
    assert torch.equal(tok[~reveal], want_tok[~reveal])  # the rows not read keep their token
    if dev.type == "cpu":
        assert torch.equal(tok, want_tok)
    else:  # GPU log/exp may move a Gumbel near-tie by one ulp
        assert int((tok != want_tok).sum()) <= 2
    assert torch.equal(conf[~reveal], want_conf[~reveal])
    assert torch.equal(conf[ids != MASK], torch.ones_like(conf[ids != MASK]))


def test_validation_reads_only_the_rows_that_are_read(backend: str, dev: torch.device) -> None:
    """With ``validate=True`` every backend checks exactly the rows it reads: NaN in a masked row
    that the absorbing decision does not reveal (or in an unmasked row) passes, NaN in a revealed
    row is refused, naming the row."""
    vocab, rows = (211, 12) if dev.type == "cpu" else (30522, 64)
    logits, ids, prob, row_index = _absorbing_case(vocab, rows, torch.float32, 9, dev)
    reveal = ref.reveal_rows(ids == MASK, prob, row_index, 5, 2)
    assert bool((~reveal & (ids == MASK)).any()) and bool(reveal.any())
    poisoned = logits.clone()
    poisoned[~reveal] = float("nan")
    kw = dict(mask_id=MASK, unmask_prob=prob, seed=5, offset=2, row_index=row_index)
    want, _ = dk.sample_absorbing(logits, ids, backend="reference", **kw)
    for name in (backend, "reference"):  # the reference's own validation too
        tok, _ = dk.sample_absorbing(poisoned, ids, backend=name, **kw)
        assert torch.equal(tok[~reveal], want[~reveal]), name
    poisoned[int(reveal.nonzero()[0, 0])] = float("nan")
    for name in (backend, "reference"):
        with pytest.raises(ValueError, match="NaN"):
            dk.sample_absorbing(poisoned, ids, backend=name, **kw)


@pytest.mark.parametrize("top_k", [None, 9])
def test_invalid_rows_follow_the_documented_rule(backend: str, dev: torch.device, top_k) -> None:
    vocab = 211 if dev.type == "cpu" else 30522
    gen = torch.Generator().manual_seed(11)
    logits = (torch.randn(6, vocab, generator=gen) * 2.5).to(dev)
    logits[1, 50] = float("nan")
    logits[2, 60] = float("inf")
    logits[3] = float("-inf")
    logits[4, :] = float("-inf")
    logits[4, MASK] = 1.0  # only a banned id is finite
    logits[5, 0] = float("nan")  # NaN on a banned id is never read
    kw = dict(temperature=0.8, top_k=top_k, seed=1)
    tok, conf = dk.sample(logits, validate=False, backend=backend, **kw)
    assert tok[1:5].tolist() == [-1, -1, -1, -1]
    assert bool(torch.isnan(conf[1:5]).all())
    ok = torch.tensor([0, 5], device=dev)
    want_tok, _ = dk.sample(logits[ok].nan_to_num(nan=0.0), backend="reference", row_index=ok, **kw)
    assert torch.equal(tok[ok], want_tok)
    with pytest.raises(ValueError, match="NaN"):
        dk.sample(logits, backend=backend, **kw)


@pytest.mark.parametrize("bad", ["nan", "posinf", "all_banned"])
def test_bad_logits_raise(backend: str, dev: torch.device, bad: str) -> None:
    logits = _logits(8, 50, seed=0, dev=dev)
    banned: list[int] = [0, 1]
    if bad == "nan":
        logits[3, 10] = float("nan")
    elif bad == "posinf":
        logits[3, 10] = float("inf")
    else:
        logits[3, 2:] = float("-inf")
    with pytest.raises(ValueError, match="row"):
        dk.sample(logits, banned_ids=banned, backend=backend)


def test_same_seed_same_tokens(backend: str, dev: torch.device) -> None:
    vocab, rows = (300, 64) if dev.type == "cpu" else (30522, 4096)
    logits = _logits(rows, vocab, 4, torch.bfloat16, scale=2.5, dev=dev)
    kw = dict(temperature=1.0, top_p=0.95, backend=backend)
    a = dk.sample(logits, seed=42, **kw)[0]
    b = dk.sample(logits, seed=42, **kw)[0]
    c = dk.sample(logits, seed=43, **kw)[0]
    d = dk.sample(logits, seed=42, offset=1, **kw)[0]
    assert torch.equal(a, b)
    assert float((a != c).float().mean()) > 0.5 and float((a != d).float().mean()) > 0.5


def _spindle_inputs(batch, length, vocab, dtype, seed, dev):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=g)
    ids[:, 0] = 1  # [CLS]-like protected
    ids[0, length // 2:] = 0  # padding
    base = torch.rand(batch, generator=g)
    amp = torch.rand(batch, generator=g) * 0.5
    info = torch.rand(vocab, generator=g) * 3 + 0.05
    protected = torch.zeros(vocab, dtype=torch.bool)
    protected[:3] = True
    return [t.to(dev) for t in (ids.to(dtype), base, amp, info, protected)]


@pytest.mark.parametrize("form", ["none", "code", "paper"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_spindle_mask_equals_reference(backend: str, device: str, dev: torch.device, form: str,
                                       dtype: torch.dtype) -> None:
    impl = resolve_backend(backend, dev)[1]
    cases = shapes(device, [(3, 37, 211), (13, 71, 500), (6, 130, 997)], [(512, 512, 30522), (4097, 61, 30522)])
    for i, (batch, length, vocab) in enumerate(cases):
        ids, base, amp, info, protected = _spindle_inputs(batch, length, vocab, dtype, i, dev)
        seed, offset = SEEDS[i + 2], 5 + i
        got_ids, got_mask = impl.spindle_mask(ids, base, amp, info, protected, form, MASK, seed, offset)
        want_ids, want_mask = ref.spindle_mask(ids, base, amp, info, protected, form, MASK, seed, offset)
        assert got_ids.dtype == ids.dtype and got_mask.dtype == torch.bool
        assert 0.05 < float(want_mask.float().mean()) < 0.95  # the test exercises both outcomes
        differ = got_mask != want_mask
        if device == "cpu":
            assert not bool(differ.any())
        elif differ.any():  # only where the draw ties the keep probability to float rounding
            keep = ref.keep_probability(ids, base, amp, info, protected, form)
            cols = torch.arange(length, device=dev)[None, :]
            rows = torch.arange(batch, device=dev)[:, None]
            u = rnd.uniform_from_bits(rnd.philox_words(seed, cols, rows, 0, offset, device=dev)[0])
            assert float((u - keep).abs()[differ].max()) < 1e-6
        assert torch.equal(got_ids[~differ], want_ids[~differ])


@pytest.mark.parametrize("gumbel_temperature", [0.0, 0.6])
def test_topk_unmask_equals_reference(backend: str, device: str, dev: torch.device, gumbel_temperature: float) -> None:
    for i, (batch, length) in enumerate(shapes(device, [(9, 40), (5, 130)], [(1024, 512), (4096, 64)])):
        g = torch.Generator().manual_seed(i + 4)
        ids = torch.randint(MASK + 1, 1000, (batch, length), generator=g)
        ids[torch.rand(batch, length, generator=g) < 0.7] = MASK
        cand = torch.randint(MASK + 1, 1000, (batch, length), generator=g)
        conf = torch.randint(0, 9, (batch, length), generator=g).float() / 8  # many ties: broken by position
        conf[2, :] = 0.0
        k = torch.randint(0, length // 2, (batch,), generator=g)
        k[0], k[1] = 0, length + 5
        ids, cand, conf, k = (t.to(dev) for t in (ids, cand, conf, k))
        kwargs = dict(mask_id=MASK, gumbel_temperature=gumbel_temperature, seed=SEEDS[i + 1], offset=3)
        want = dk.topk_unmask(ids, cand, conf, k, backend="reference", **kwargs)
        got = dk.topk_unmask(ids, cand, conf, k, backend=backend, **kwargs)
        assert got.dtype == ids.dtype
        assert torch.equal(got, want)
        revealed = (got != ids).sum(1)
        assert torch.equal(revealed, torch.minimum(k, (ids == MASK).sum(1)))


@pytest.mark.parametrize(
    "strategy, kwargs",
    [
        ("posterior", dict(temperature=0.9, top_k=30)),
        ("posterior", dict(temperature=1.0, top_p=0.9)),
        ("topk", dict(temperature=0.8, gumbel_temperature=0.5, top_k=20)),
        ("topk", dict(temperature=0.0)),
    ],
)
def test_generate_equals_reference(backend: str, dev: torch.device, strategy: str, kwargs: dict) -> None:
    den = dk.BigramDenoiser(vocab_size=157, mask_id=MASK, seed=1)
    common = dict(mask_id=MASK, batch_size=3, seq_len=16, steps=5, strategy=strategy, seed=9, progress=False,
                  device=dev, prefix=[101], **kwargs)
    want = dk.generate(den, backend="reference", **common)
    got = dk.generate(den, backend=backend, **common)
    assert torch.equal(got, want)
    assert not bool((got == MASK).any())
