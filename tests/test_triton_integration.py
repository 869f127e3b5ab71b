"""The Triton backend behind the public API: dispatch, custom ops under torch.compile and
CUDA-graph capture, compilation for a GPU target, and import without Triton. (Its equality with
the reference, the sampler loop included, is in ``tests/test_backends_equivalence.py``.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

import dbert_kernels as dk
from dbert_kernels.backends import resolve_backend

from .triton_devices import DEVICES, require_triton

pytestmark = [
    pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning"),
]


def test_import_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import dbert_kernels as dk\n"
        "assert 'triton' not in dk.available_backends('cpu'), dk.available_backends('cpu')\n"
        "import torch\n"
        "try:\n"
        "    dk.sample(torch.zeros(1, 200), backend='triton')\n"
        "except RuntimeError as e:\n"
        "    assert 'not available' in str(e)\n"
        "else:\n"
        "    raise SystemExit('backend=triton did not raise without triton')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_never_picks_the_interpreter_on_cpu():
    assert resolve_backend("auto", torch.device("cpu"))[0] != "triton"


@pytest.mark.cuda
def test_auto_picks_triton_on_cuda():
    require_triton("cuda")
    assert resolve_backend("auto", torch.device("cuda"))[0] == "triton"


def _step(logits, ids, unmask_prob, banned, rng, candidates_k):
    """One whole sampling step on tensors only (absorbing sample, then top-k unmasking)."""
    ops = torch.ops.dbert_kernels
    batch, length = ids.shape
    flat = ids.reshape(-1)
    row_index = torch.arange(flat.numel(), device=ids.device)
    tokens, conf, ent, _ = ops.triton_sample(logits, flat, unmask_prob, banned, row_index, rng, 103,
                                          1.0 / 0.8, False, 20, 0.95, True, False)
    conf = torch.where(flat == 103, conf, torch.zeros_like(conf))
    tokens = torch.where(flat == 103, tokens, flat)
    new_ids = ops.triton_topk_unmask(ids, tokens.view(batch, length), conf.view(batch, length),
                                     candidates_k, rng, 103, 0.3)
    return new_ids, ent


def _step_inputs(dev, batch=2, length=9, vocab=211):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(104, vocab, (batch, length), generator=g)
    ids[torch.rand(batch, length, generator=g) < 0.6] = 103
    logits = torch.randn(batch * length, vocab, generator=g)
    banned = torch.zeros(vocab, dtype=torch.bool)
    banned[[0, 101, 102, 103]] = True
    prob = torch.ones(batch * length)
    k = torch.arange(batch) % 4 + 1  # per-row counts [B]
    rng = torch.tensor([1234, 0], dtype=torch.int64)
    return [t.to(dev) for t in (logits, ids, prob, banned, rng, k)]


@pytest.mark.parametrize("device", DEVICES)
def test_custom_ops_compile_with_tensor_seeds(device):
    dev = require_triton(device)
    import dbert_kernels.triton_backend  # noqa: F401  (registers the ops)

    torch._dynamo.reset()
    compiled = torch.compile(_step, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    logits, ids, prob, banned, rng, k = _step_inputs(dev)
    for offset in range(2):
        rng[1] = offset  # a new counter without recompiling
        want_ids, want_ent = _step(logits, ids, prob, banned, rng, k)
        got_ids, got_ent = compiled(logits, ids, prob, banned, rng, k)
        assert torch.equal(got_ids, want_ids)
        assert torch.equal(got_ent, want_ent)
    # the custom op equals the public op with the same seed and offset
    pub, _ = dk.sample_absorbing(logits, ids.reshape(-1), mask_id=103, temperature=0.8, top_k=20, top_p=0.95,
                                 seed=1234, offset=1, backend="reference")
    flat = ids.reshape(-1)
    tok, _, _, _ = torch.ops.dbert_kernels.triton_sample(logits, flat, prob, banned, torch.arange(flat.numel(), device=dev),
                                                      rng, 103, 1.0 / 0.8, False, 20, 0.95, False, False)
    assert torch.equal(tok, pub)


@pytest.mark.cuda
def test_cuda_graph_capture_of_a_sampling_step():
    dev = require_triton("cuda")
    logits, ids, prob, banned, rng, k = _step_inputs(dev, batch=16, length=64, vocab=30522)
    _step(logits, ids, prob, banned, rng, k)  # compile the kernels before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_ids, static_ent = _step(logits, ids, prob, banned, rng, k)
    for offset in (3, 4, 5):
        rng[1].fill_(offset)
        graph.replay()
        want_ids, want_ent = _step(logits, ids, prob, banned, rng, k)
        assert torch.equal(static_ids, want_ids)
        assert torch.equal(static_ent, want_ent)


def _compiler_env() -> dict[str, str]:
    """This process's environment without ``TRITON_INTERPRET``: ``compile_check`` compiles."""
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@pytest.mark.interpreter
def test_kernels_compile_for_a_gpu_target_without_a_gpu():
    """The compiler (not the interpreter) accepts every kernel: built for sm_90 with Triton's own
    toolchain, in a subprocess without TRITON_INTERPRET."""
    pytest.importorskip("triton")
    out = subprocess.run([sys.executable, "-m", "dbert_kernels.triton_backend.compile_check", "--quick"],
                         env=_compiler_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(": ok in") == 6
    sample = next(line for line in out.stdout.splitlines() if line.startswith("sample"))
    # the persistent kernel sweeps the row in loops: sweep 1 (from DRAM), the weights, the slots'
    # compaction, the drawing sweep and the two bisections' sweeps
    loads, looped = re.search(r"logits loads (\d+) \(in loops (\d+)\)", sample).groups()
    assert int(loads) == 6 and looped == loads, sample
    assert re.search(r"total compile time [\d.]+ s", out.stdout), out.stdout
    # two independent reads of the cubin agree: spilled bytes (its resource table) and spill
    # instructions (its SASS)
    for line in out.stdout.splitlines()[1:-1]:
        spilled, instructions = re.search(r"spilled bytes (\d+) \(spill instructions (\d+) of \d+", line).groups()
        assert (spilled == "0") == (instructions == "0"), line


@pytest.mark.interpreter
def test_production_sampling_variants_pass_the_strict_check():
    """``compile_check --production --strict`` with the installed Triton: the production sampling
    variants compile for sm_90 with no spill and at most 128 registers per thread, within the
    compile budget (it exits non-zero otherwise)."""
    pytest.importorskip("triton")
    out = subprocess.run([sys.executable, "-m", "dbert_kernels.triton_backend.compile_check", "--production",
                          "--strict"], env=_compiler_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    production = [line for line in out.stdout.splitlines() if line.endswith("[production]")]
    assert len(production) == 2 and all("spilled bytes 0 " in line for line in production), out.stdout


@pytest.mark.interpreter
def test_compile_check_finds_spill_instructions_and_loops_in_sass():
    """``spill_instructions`` counts the local-memory instructions of a SASS listing and those
    between a backward branch and its target; NOP padding and forward branches are no code / no loop."""
    pytest.importorskip("triton")
    sass = "\n".join(f"        /*{address:04x}*/  {text} ;  /* 0x0 */" for address, text in [
        (0x00, "MOV R1, c[0x0][0x28]"), (0x10, "STL [R1], R2"), (0x20, "@P1 BRA 0x50"),
        (0x30, "LDL R3, [R1]"), (0x40, "@P0 BRA 0x30"), (0x50, "STL.64 [R1+0x8], R4"),
        (0x60, "EXIT"), (0x70, "BRA 0x70"), (0x80, "NOP"), (0x90, "NOP"),
    ])
    code = ("import sys; from dbert_kernels.triton_backend.compile_check import spill_instructions; "
            "print(spill_instructions(sys.stdin.read()))")
    out = subprocess.run([sys.executable, "-c", code], input=sass, env=_compiler_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(8, 3, 1)"


def test_gpu_script_dry_run_prints_the_plan_within_budget():
    """``bash bench/gpu.sh --dry-run`` needs no GPU: it lists each part with its budget, in order,
    and the budgets add up to at most the 8 minutes the script is sized for."""
    import re
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "gpu.sh"
    out = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    parts = re.findall(r"^\s+(\S+)\s+(\d+) s\s+(.+)$", out.stdout, flags=re.M)
    assert [p[0] for p in parts] == ["environment", "cuda-tests", "kernel-timings", "traffic", "end-to-end", "tradeoff"]
    assert "-m cuda" in parts[1][2] and "bench.kernels" in parts[2][2] and "bench.traffic" in parts[3][2]
    assert "--only e2e" in parts[4][2] and "--only tradeoff" in parts[5][2]
    for name in re.findall(r"tests/\S+\.py", parts[1][2]):  # every test file it names exists
        assert (script.parent.parent / name).is_file(), name
    total = int(re.search(r"total budget (\d+) s", out.stdout).group(1))
    assert sum(int(p[1]) for p in parts) <= total <= 480


def test_gpu_script_without_a_gpu_says_so():
    from pathlib import Path

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    script = Path(__file__).resolve().parent.parent / "bench" / "gpu.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no CUDA GPU" in out.stderr
