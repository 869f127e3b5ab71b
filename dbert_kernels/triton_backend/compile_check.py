"""Compile every kernel variant for a GPU target without a GPU (Triton's bundled toolchain).

    TRITON_INTERPRET=0 python -m dbert_kernels.triton_backend.compile_check [--arch 90]

Catches what the interpreter accepts but the compiler rejects (non-constexpr globals, loop-carried
type changes...) and reports register spills (``.local`` memory in the PTX), on a machine with no
GPU. Exits non-zero on the first kernel that does not compile.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    raise SystemExit("run compile_check with TRITON_INTERPRET unset: the interpreter compiles nothing")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from . import masking, sampling, unmask  # noqa: E402

_SAMPLE_SIG = {
    "logits_ptr": "*bf16", "stride_row": "i32", "ids_ptr": "*i64", "prob_ptr": "*fp32", "banned_ptr": "*i8",
    "row_index_ptr": "*i64", "rng_ptr": "*i64", "out_tok_ptr": "*i64", "out_conf_ptr": "*fp32",
    "out_ent_ptr": "*fp32", "n_rows": "i32", "vocab": "i32", "mask_id": "i32", "inv_t": "fp32", "top_k": "i32",
    "top_p": "fp32",
}
_MASK_SIG = {
    "ids_ptr": "*i64", "base_ptr": "*fp32", "amp_ptr": "*fp32", "info_ptr": "*fp32", "protected_ptr": "*i8",
    "rng_ptr": "*i64", "out_ids_ptr": "*i64", "out_mask_ptr": "*i8", "length": "i32", "mask_id": "i32",
}
_UNMASK_SIG = {
    "ids_ptr": "*i64", "cand_ptr": "*i64", "conf_ptr": "*fp32", "k_ptr": "*i64", "rng_ptr": "*i64",
    "out_ptr": "*i64", "length": "i32", "mask_id": "i32", "gumbel_temperature": "fp32",
}


_QUICK = {(False, True, True, True), (True, False, False, False), (False, False, False, False)}


def _variants(quick: bool):
    for greedy, topk, topp, ent in itertools.product((False, True), repeat=4):
        if quick and (greedy, topk, topp, ent) not in _QUICK:
            continue
        yield "sample", sampling._sample_kernel, _SAMPLE_SIG, dict(
            HAS_IDS=True, GREEDY=greedy, USE_TOPK=topk, USE_TOPP=topp, FILTERED=topk or topp,
            WITH_ENTROPY=ent, BLOCK_R=1, BLOCK_V=2048), 8
    for form in masking.FORMS.values():
        yield "spindle_mask", masking._spindle_mask_kernel, _MASK_SIG, dict(FORM=form, BLOCK_L=512), 4
    for gumbel in (False, True):
        yield "topk_unmask", unmask._topk_unmask_kernel, _UNMASK_SIG, dict(USE_GUMBEL=gumbel, BLOCK_L=512), 4


def compile_all(arch: int = 90, quick: bool = False) -> list[str]:
    """Compile every variant (``quick``: three of the sixteen sampler variants) for ``sm_<arch>``.

    Returns one report line per variant; raises ``triton.CompilationError`` on failure.
    """
    target = GPUTarget("cuda", arch, 32)
    lines = []
    for name, fn, sig, consts, warps in _variants(quick):
        signature = dict(sig, **{k: "constexpr" for k in consts})
        keys = list(signature)
        start = time.perf_counter()
        src = ASTSource(fn=fn, signature=signature, constexprs={(keys.index(k),): v for k, v in consts.items()})
        kernel = triton.compile(src, target=target, options={"enable_fp_fusion": False, "num_warps": warps})
        spills = len(re.findall(r"\.local\s", kernel.asm["ptx"]))
        lines.append(f"{name} {consts}: ok in {time.perf_counter() - start:.1f} s, local-memory decls {spills}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 or 90")
    parser.add_argument("--quick", action="store_true", help="only 3 of the 16 sampler variants")
    args = parser.parse_args()
    for line in compile_all(args.arch, args.quick):
        print(line, flush=True)


if __name__ == "__main__":
    main()
