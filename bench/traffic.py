"""Memory traffic of the Triton sampling kernels, read by Nsight Compute on a GPU.

    ncu --metrics dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum -k regex:_sample \\
        python -m bench.traffic

launches the Triton sampling launcher (the kernel it picks by default) once per case on
``[rows, V]`` logits and prints, before each launch, the case and the bytes of its logits;
Nsight Compute prints each launch's DRAM bytes read and written and its duration. One read of
each row is DRAM bytes read ~= the logits' bytes; a kernel that re-reads the row once per pass
shows the extra passes (mostly from L2 when the rows in flight fit there); spills show up as
local-memory traffic on top. ``bash bench/gpu.sh`` runs it when ``ncu`` is installed
(``--rehearse``: without ncu, on the CPU under the Triton interpreter, at a tiny size).
"""

from __future__ import annotations

import argparse

import torch

from .kernels import _DTYPES, _LOGIT_SCALE, TRITON_VARIANTS, _triton_caller, _variant_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--variants", default="T=1,top-k 30", help="comma-separated names of bench.kernels variants")
    parser.add_argument("--device", default="cuda", help="cuda (cpu: the launches under the Triton interpreter, a smoke test)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("python -m bench.traffic launches the Triton kernels on a CUDA GPU; none is visible")
    device = torch.device(args.device)
    wanted = [v.strip() for v in args.variants.split(",")]
    unknown = set(wanted) - {v[0] for v in TRITON_VARIANTS}
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}: choose from {[v[0] for v in TRITON_VARIANTS]}")
    prob = torch.ones(args.rows, device=device)
    row_index = torch.arange(args.rows, device=device)
    launch = 0
    for dtype in args.dtypes.split(","):
        x = (torch.randn(args.rows, args.vocab, device=device) * _LOGIT_SCALE).to(_DTYPES[dtype])
        for name, params in _variant_params(args.vocab, device):
            if name not in wanted:
                continue
            print(f"launch {launch}: {args.rows}x{args.vocab} {dtype} {name} "
                  f"logits_bytes={x.numel() * x.element_size()}", flush=True)
            _triton_caller(params, prob, row_index, device)(x, launch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            launch += 1


if __name__ == "__main__":
    main()
