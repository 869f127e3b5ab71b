"""Compile the Triton kernel variants for a GPU target without a GPU and report their resources.

Triton's bundled toolchain compiles for ``--arch`` (default sm_90):

    TRITON_INTERPRET=0 python -m dbert_kernels.triton_backend.compile_check [--arch 90] [--quick | --production] [--strict]

Catches what the interpreter accepts but the compiler rejects, on a machine with no GPU, and
reports per variant: registers per thread, spilled bytes (the per-thread stack of the cubin, read
with the bundled ``cuobjdump``), the spill instructions in its SASS (local-memory stores and
reloads, and how many of them sit inside a loop: a spill outside every loop costs once per row,
one inside a loop once per pass), shared memory, and the number of global loads of the logits in
the generated Triton IR (``tt.load`` ops whose pointer derives from ``logits_ptr``, each a sweep
over the row; ``in loops`` counts those inside a loop), and the compile time of each variant and
of all. The sampling kernel has one variant per logits dtype (every option is a run-time
argument). ``--strict`` fails when a production sampling variant spills or takes more than
:data:`MAX_REGISTERS` registers, or when all the variants take more than
:data:`COMPILE_BUDGET_S` to compile. Exits non-zero on the first kernel that does not compile.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("run compile_check with TRITON_INTERPRET unset: the interpreter compiles nothing")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from ..schedules import SPINDLE_FORM_CODES  # noqa: E402
from . import masking, sampling, unmask  # noqa: E402

_SAMPLE_COMMON = {
    "logits_ptr": "*bf16", "stride_row": "i32", "ids_ptr": "*i64", "prob_ptr": "*fp32", "banned_ptr": "*i8",
    "row_index_ptr": "*i64", "rng_ptr": "*i64", "out_tok_ptr": "*i64", "out_conf_ptr": "*fp32",
    "out_ent_ptr": "*fp32", "out_margin_ptr": "*fp32",
}
_SCALARS = {"n_rows": "i32", "vocab": "i32", "mask_id": "i32", "inv_t": "fp32", "top_k": "i32", "top_p": "fp32"}
_FLAGS = {k: "i32" for k in ("has_ids", "greedy", "use_topk", "use_topp", "with_entropy", "with_margin")}
_SAMPLE_SIG = dict(_SAMPLE_COMMON, slot_x_ptr="*fp32", slot_col_ptr="*i32", **_SCALARS, **_FLAGS)
_MASK_SIG = {
    "ids_ptr": "*i64", "base_ptr": "*fp32", "amp_ptr": "*fp32", "info_ptr": "*fp32", "protected_ptr": "*i8",
    "rng_ptr": "*i64", "out_ids_ptr": "*i64", "out_mask_ptr": "*i8", "length": "i32", "mask_id": "i32",
}
_UNMASK_SIG = {
    "ids_ptr": "*i64", "cand_ptr": "*i64", "conf_ptr": "*fp32", "k_ptr": "*i64", "rng_ptr": "*i64",
    "out_ptr": "*i64", "length": "i32", "mask_id": "i32", "gumbel_temperature": "fp32",
}

#: Logits dtypes of the sampling kernel's variants: every option is a run-time argument, so these
#: are all the variants a GPU compiles (the production ones: the dtypes of bf16 / fp32 models).
SAMPLE_DTYPES = ("bf16", "fp32", "fp16")
PRODUCTION_DTYPES = ("bf16", "fp32")


def _variants(quick: bool, production: bool = False):
    """(name, kernel, signature, constexprs, warps, production?) of each variant to compile."""
    dtypes = SAMPLE_DTYPES[:1] if quick else PRODUCTION_DTYPES if production else SAMPLE_DTYPES
    for dtype in dtypes:
        consts = dict(BLOCK_R=1, BLOCK_V=sampling.GPU_BLOCK_V, SLOTS=sampling.SLOTS)
        yield ("sample", sampling._sample_kernel, dict(_SAMPLE_SIG, logits_ptr=f"*{dtype}"), consts,
               sampling.GPU_WARPS, dtype in PRODUCTION_DTYPES)
    for form in SPINDLE_FORM_CODES.values():
        yield "spindle_mask", masking._spindle_mask_kernel, _MASK_SIG, dict(FORM=form, BLOCK_L=512), 4, False
    for gumbel in (False, True):
        yield "topk_unmask", unmask._topk_unmask_kernel, _UNMASK_SIG, dict(USE_GUMBEL=gumbel, BLOCK_L=512), 4, False


def _cuobjdump(cubin: bytes, flag: str) -> str:
    """The bundled ``cuobjdump <flag>`` of a cubin; empty if unavailable."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            return subprocess.run([str(tool), flag, f.name], capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return ""


def _resources(cubin: bytes) -> dict[str, int]:
    """REG / STACK / SHARED / LOCAL of the cubin's kernel (bundled cuobjdump); empty if unavailable."""
    text = _cuobjdump(cubin, "--dump-resource-usage")
    return {k: int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text.split("Function", 1)[-1])}


def spill_instructions(sass: str) -> tuple[int, int, int]:
    """(instructions, spill instructions, spill instructions inside a loop) of a ``cuobjdump -sass``
    listing with one kernel.

    ``NOP`` padding is not counted. Spill instructions are the local-memory stores and reloads
    (``STL`` / ``LDL``); one is inside a loop when it lies between a backward branch (``BRA`` to a
    lower address) and its target.
    """
    code = [(int(a, 16), text) for a, text in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)
            if not text.startswith("NOP")]
    loops = []
    for address, text in code:
        target = re.search(r"\bBRA\b.*\b0x([0-9a-f]+)\s*$", text)
        if target and int(target.group(1), 16) <= address:
            loops.append((int(target.group(1), 16), address))
    spills = [address for address, text in code if re.search(r"\b(LDL|STL)\b", text)]
    looped = sum(any(lo <= a <= hi for lo, hi in loops) for a in spills)
    return len(code), len(spills), looped


def logits_loads(ttir: str) -> tuple[int, int]:
    """(global loads whose pointer derives from ``%logits_ptr``, how many of them sit in a loop).

    The printed IR reuses value names in sibling regions, so the derived pointers are tracked per
    region: a region sees its parents' and its own, not a sibling's.
    """
    scopes: list[set[str]] = [{"%logits_ptr"}]  # derived pointers visible in each open region
    loads = in_loop = 0
    blocks: list[bool] = []  # open regions: is each one a loop body?
    for line in ttir.splitlines():
        stripped = line.strip()
        if stripped.startswith("}"):
            if blocks:
                blocks.pop()
                scopes.pop()
            if stripped.endswith("{"):  # "} do {" of scf.while, "} else {" of scf.if
                blocks.append(" do " in stripped or (len(blocks) > 0 and blocks[-1]))
                scopes.append(set(scopes[-1]))
            continue
        if stripped.endswith("{"):
            blocks.append(bool(re.search(r"\bscf\.(for|while)\b", stripped)) or any(blocks))
            scopes.append(set(scopes[-1]))
        derived = scopes[-1]
        m = re.match(r"(%[\w.#]+)(?::\d+)? = (\S+) (.*)", stripped)
        if not m:
            continue
        result, op, rest = m.groups()
        operands = set(re.findall(r"%[\w.#]+", rest))
        if op in ("tt.splat", "tt.addptr", "tt.broadcast", "tt.expand_dims", "tt.reshape") and operands & derived:
            derived.add(result)
        if op == "tt.load" and operands & derived:
            loads += 1
            in_loop += any(blocks)
    return loads, in_loop


#: Limits that ``--strict`` enforces on the production sampling variants: registers per thread,
#: and the compile time of all the variants (the CUDA tests and ``bench/gpu.sh`` compile them
#: all), in seconds of one CPU core.
MAX_REGISTERS = 128
COMPILE_BUDGET_S = 120.0


def compile_all(arch: int = 90, quick: bool = False, strict: bool = False, production: bool = False) -> list[str]:
    """Compile each variant for ``sm_<arch>``; one report line per variant, then the total
    compile time.

    Raises ``triton.CompilationError`` on failure and ``RuntimeError`` (``strict``) when a
    production sampling variant spills or takes more than :data:`MAX_REGISTERS` registers, or when
    the variants take more than :data:`COMPILE_BUDGET_S` to compile.
    """
    target = GPUTarget("cuda", arch, 32)
    lines = []
    total_s = 0.0
    for name, fn, sig, consts, warps, is_production in _variants(quick, production):
        signature = dict(sig, **{k: "constexpr" for k in consts})
        keys = list(signature)
        start = time.perf_counter()
        # pointers 16-byte aligned, as a launch on PyTorch's allocations marks them (integers are
        # not specialised: V = 30522 and its row stride are not multiples of 16)
        aligned = {(keys.index(k),): [["tt.divisibility", 16]] for k, v in sig.items() if v.startswith("*")}
        src = ASTSource(fn=fn, signature=signature, constexprs={(keys.index(k),): v for k, v in consts.items()},
                        attrs=aligned)
        options = {"enable_fp_fusion": False, "num_warps": warps}
        if fn is sampling._sample_kernel:
            options["maxnreg"] = sampling.GPU_MAX_REGISTERS
        kernel = triton.compile(src, target=target, options=options)
        seconds = time.perf_counter() - start
        total_s += seconds
        res = _resources(kernel.asm["cubin"])
        n_code, n_spill, spill_looped = spill_instructions(_cuobjdump(kernel.asm["cubin"], "-sass"))
        flags = {k: v for k, v in consts.items() if k in ("GREEDY", "USE_TOPK", "USE_TOPP", "FORM", "USE_GUMBEL")}
        loads = ""
        if name.startswith("sample"):
            n, looped = logits_loads(kernel.asm["ttir"])
            loads = f" logits loads {n} (in loops {looped})"
        spill = res.get("STACK", 0) + res.get("LOCAL", 0)
        lines.append(
            f"{name} {sig.get('logits_ptr', '')[1:]} block={consts.get('BLOCK_V', consts.get('BLOCK_L'))} warps={warps} "
            f"{flags}: ok in {seconds:.1f} s, registers {res.get('REG', '?')}, "
            f"spilled bytes {spill} (spill instructions {n_spill} of {n_code}, in loops {spill_looped}), "
            f"shared {kernel.metadata.shared}{loads}{' [production]' if is_production else ''}"
        )
        if strict and is_production and (spill or res.get("REG", 0) > MAX_REGISTERS):
            raise RuntimeError(f"a production variant spills or takes more than {MAX_REGISTERS} registers: "
                               + lines[-1])
    lines.append(f"total compile time {total_s:.1f} s (budget {COMPILE_BUDGET_S:.0f} s)")
    if strict and total_s > COMPILE_BUDGET_S:
        raise RuntimeError(lines[-1])
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 or 90")
    parser.add_argument("--quick", action="store_true", help="the bf16 sampling variant and the other kernels")
    parser.add_argument("--strict", action="store_true",
                        help=f"fail when a production sampling variant spills or takes more than {MAX_REGISTERS} "
                        f"registers, or the variants take more than {COMPILE_BUDGET_S:.0f} s to compile")
    parser.add_argument("--production", action="store_true",
                        help="only the production sampling variants (bf16, fp32) and the other kernels")
    args = parser.parse_args()
    print(f"# compile_check --arch {args.arch}{' --quick' if args.quick else ''}"
          f"{' --production' if args.production else ''}: triton {triton.__version__}", flush=True)
    for line in compile_all(args.arch, args.quick, args.strict, args.production):
        print(line, flush=True)


if __name__ == "__main__":
    main()
