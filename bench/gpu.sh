#!/usr/bin/env bash
# The one GPU command: CUDA correctness tests, then kernel timings, then end to end vs GPT-2, then
# (with TRADEOFF_RUNS=DIR of trained checkpoints) speed against quality vs the GPT-2 baseline.
# Sized for at most 8 minutes on an H100: each part has a time budget (enforced with `timeout`),
# and a part whose budget no longer fits in what is left of the total is skipped and listed.
# The traffic part reads DRAM bytes per sampling-kernel launch under Nsight Compute.
# Results (named after the card) go to bench/results/. Needs only what the GPU machines have
# (torch, triton, transformers, pytest, safetensors; pytest-xdist if present): the repository is
# put on the import path (no install, no network). Triton compiles each kernel variant once
# (seconds to tens of seconds for the resident sampler), so the tests run in parallel processes
# where pytest-xdist exists and the kernel timings compile their variants in parallel first.
#
#   bash bench/gpu.sh             # run
#   bash bench/gpu.sh --dry-run   # print the plan and the budgets, run nothing (no GPU needed)
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then  # the interpreter that has torch: `python`, else `python3`
  for candidate in python python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import torch' 2>/dev/null; then
      PYTHON=$candidate
      break
    fi
  done
fi
PY=${PYTHON:-python3}
OUT=bench/results
TOTAL_S=${GPU_TOTAL_S:-480}
JOBS=${GPU_JOBS:-$(nproc 2>/dev/null || echo 8)}  # test processes and kernel-compiling processes (Triton compiles on the CPU)
XDIST=""
if $PY -c 'import xdist' 2>/dev/null; then XDIST="-n $JOBS"; fi
# part name | budget in seconds | command
PARTS=(
  "environment|10|$PY -c 'import dbert_kernels, dbert_model, torch, triton, transformers; print(\"torch\", torch.__version__, \"triton\", triton.__version__, \"transformers\", transformers.__version__, \"cuda\", torch.version.cuda)'; nvidia-smi -L || true"
  "cuda-tests|170|$PY -m pytest -p no:cacheprovider -m cuda -v --tb=short -rfE $XDIST tests/test_triton_integration.py tests/test_backends_equivalence.py tests/test_triton_kernels.py tests/test_distributions.py tests/test_compile.py"
  "kernel-timings|150|$PY -m bench.kernels --out $OUT --compile-jobs $JOBS"
  "traffic|30|NCU=\$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1); if [ -n \"\$NCU\" ]; then \$NCU --metrics dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum -k regex:_sample $PY -m bench.traffic; else echo 'traffic: ncu not found, not measured'; fi"
  "end-to-end|90|$PY -m bench --device cuda --only e2e --no-progress --budget-s 60 --out $OUT"
  "tradeoff|30|if [ -z \"\${TRADEOFF_RUNS:-}\" ]; then echo 'tradeoff: set TRADEOFF_RUNS=DIR (diffusion/, gpt2/, judge/ from bash bench/tradeoff.sh) to run it'; else $PY -m bench --device cuda --only tradeoff --no-progress --out $OUT --checkpoint \$TRADEOFF_RUNS/diffusion --baseline \$TRADEOFF_RUNS/gpt2 --judge \$TRADEOFF_RUNS/judge; fi"
)

plan() {
  echo "bench/gpu.sh plan (total budget ${TOTAL_S} s):"
  local sum=0
  for part in "${PARTS[@]}"; do
    IFS='|' read -r name budget cmd <<<"$part"
    sum=$((sum + budget))
    printf '  %-15s %4d s  %s\n' "$name" "$budget" "$cmd"
  done
  echo "  sum of part budgets: ${sum} s"
}

if [ "${1:-}" = "--dry-run" ]; then
  plan
  exit 0
fi
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "bench/gpu.sh: no CUDA GPU visible to $PY (bash bench/gpu.sh --dry-run prints the plan)" >&2
  exit 2
fi
unset TRITON_INTERPRET
# the repository on the import path: dbert_kernels from the root, dbert_model (model/) by a link
if ! $PY -c 'import dbert_model' 2>/dev/null; then
  LINKS=$(mktemp -d)
  ln -s "$PWD/model" "$LINKS/dbert_model"
  export PYTHONPATH="$PWD:$LINKS${PYTHONPATH:+:$PYTHONPATH}"
fi
export PY
mkdir -p "$OUT"
CARD=$($PY -c "import re, torch; print(re.sub(r'[^A-Za-z0-9]+', '_', torch.cuda.get_device_name()).strip('_'))")
LOG="$OUT/gpu_${CARD}.txt"
plan | tee "$LOG"
skipped=()
failed=()
for part in "${PARTS[@]}"; do
  IFS='|' read -r name budget cmd <<<"$part"
  left=$((TOTAL_S - SECONDS))
  if [ "$budget" -gt "$left" ]; then
    skipped+=("$name (needs ${budget} s, ${left} s left)")
    continue
  fi
  echo "== $name (budget ${budget} s, ${left} s left) on $CARD" | tee -a "$LOG"
  timeout "$budget" bash -c "$cmd" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || failed+=("$name (exit $rc)")
done
{
  echo "== summary on $CARD after ${SECONDS} s"
  echo "skipped: ${skipped[*]:-none}"
  echo "failed: ${failed[*]:-none}"
} | tee -a "$LOG"
[ "${#failed[@]}" -eq 0 ]
