#!/usr/bin/env bash
# The one GPU command: CUDA smoke tests, then kernel timings, then end to end vs GPT-2, then
# (with TRADEOFF_RUNS=DIR of trained checkpoints) speed against quality vs the GPT-2 baseline.
# Sized for at most 8 minutes on an H100: each part has a time budget (enforced with `timeout`,
# then a kill 10 s later), the budgets leave at least 20 s of slack under the total, and a part
# whose budget no longer fits in what is left of the total is skipped and listed. Every part
# writes its results as it goes, so a part cut by its timeout keeps what it measured. The
# traffic part reads DRAM bytes per sampling-kernel launch under Nsight Compute.
# Results (named after the card) go to bench/results/ (GPU_OUT=DIR elsewhere). Needs only what
# the GPU machines have (torch, triton, transformers, pytest, safetensors; no matplotlib, no
# pytest-xdist, no network): the repository is put on the import path (nothing is installed).
# Triton compiles each kernel variant once per process, seconds each, into TRITON_CACHE_DIR
# (default .triton-cache/ in the repository), so the smoke tests and the kernel timings compile
# their variants in parallel processes (GPU_JOBS) and then find them there.
#
#   bash bench/gpu.sh             # run (needs a CUDA GPU)
#   bash bench/gpu.sh --dry-run   # print the plan and the budgets, run nothing (no GPU needed)
#   bash bench/gpu.sh --rehearse  # every part's Python entry on the CPU under the Triton
#                                 # interpreter at tiny sizes, results in a temporary folder
#                                 # (GPU_OUT=DIR to choose it); about a minute, no GPU needed
#
# The full CUDA suite (too long for this script's budget):
#   python -m pytest -m cuda tests/test_triton_integration.py tests/test_backends_equivalence.py \
#       tests/test_triton_kernels.py tests/test_distributions.py tests/test_compile.py
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=run
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --rehearse) MODE=rehearse ;;
    *) echo "usage: bash bench/gpu.sh [--dry-run] [--rehearse]" >&2; exit 64 ;;
  esac
done
if [ -z "${PYTHON:-}" ]; then  # the interpreter that has torch: `python`, else `python3`
  for candidate in python python3; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import torch' 2>/dev/null; then
      PYTHON=$candidate
      break
    fi
  done
fi
PY=${PYTHON:-python3}
JOBS=${GPU_JOBS:-$(nproc 2>/dev/null || echo 8)}  # processes that compile Triton kernels (on the CPU)
if [ "$MODE" = rehearse ]; then
  # the same parts, imports and code paths on the CPU, at tiny sizes and small budgets
  TOTAL_S=${GPU_TOTAL_S:-170}
  if [ -n "${GPU_OUT:-}" ]; then OUT=$GPU_OUT
  elif [ "$DRY_RUN" = 1 ]; then OUT="${TMPDIR:-/tmp}/gpu-rehearse.XXXXXX"
  else OUT=$(mktemp -d "${TMPDIR:-/tmp}/gpu-rehearse.XXXXXX"); fi
  DEVICE=cpu
  JOBS=${GPU_JOBS:-2}
  B_ENV=20 B_TESTS=45 B_KERNELS=35 B_TRAFFIC=15 B_E2E=25 B_TRADEOFF=10 E2E_BUDGET=10
  SMOKE_MARK=interpreter
  KERNEL_ARGS="--device cpu --rows 3 --vocabs 300,517 --dtypes bfloat16 --warmup 0 --repeats 1"
  TRAFFIC_ARGS="--device cpu --rows 3 --vocab 300 --dtypes bfloat16"
  QUICK=--quick
  NO_NCU="echo 'traffic: ncu not found; rehearsal: the launches without it'; $PY -m bench.traffic $TRAFFIC_ARGS"
else
  TOTAL_S=${GPU_TOTAL_S:-480}
  OUT=${GPU_OUT:-bench/results}
  DEVICE=cuda
  B_ENV=10 B_TESTS=90 B_KERNELS=160 B_TRAFFIC=30 B_E2E=120 B_TRADEOFF=30 E2E_BUDGET=80
  SMOKE_MARK=cuda
  KERNEL_ARGS=""
  TRAFFIC_ARGS=""
  QUICK=""
  NO_NCU="echo 'traffic: ncu not found, not measured'"
fi
SMOKE_JOBS=$((JOBS < 6 ? JOBS : 6))
# part name | budget in seconds | command
PARTS=(
  "environment|$B_ENV|$PY -c 'import dbert_kernels, dbert_model, torch, triton, transformers; print(\"torch\", torch.__version__, \"triton\", triton.__version__, \"transformers\", transformers.__version__, \"cuda\", torch.version.cuda)' || exit 1; if command -v nvidia-smi >/dev/null; then nvidia-smi -L; else echo 'nvidia-smi: not found'; fi"
  "cuda-tests|$B_TESTS|DBERT_SMOKE_COMPILE_JOBS=$SMOKE_JOBS $PY -m pytest -p no:cacheprovider -m $SMOKE_MARK -v --tb=short -rfEs tests/test_gpu_smoke.py"
  "kernel-timings|$B_KERNELS|$PY -m bench.kernels --out $OUT --compile-jobs $JOBS $KERNEL_ARGS"
  "traffic|$B_TRAFFIC|NCU=\$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1); if [ -n \"\$NCU\" ]; then \$NCU --metrics dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum -k regex:_sample $PY -m bench.traffic $TRAFFIC_ARGS; else $NO_NCU; fi"
  "end-to-end|$B_E2E|$PY -m bench --device $DEVICE --only e2e $QUICK --no-progress --budget-s $E2E_BUDGET --out $OUT"
  "tradeoff|$B_TRADEOFF|if [ -z \"\${TRADEOFF_RUNS:-}\" ]; then echo 'tradeoff: set TRADEOFF_RUNS=DIR (diffusion/, gpt2/, judge/ from bash bench/tradeoff.sh) to run it'; else $PY -m bench --device $DEVICE --only tradeoff $QUICK --no-progress --out $OUT --checkpoint \$TRADEOFF_RUNS/diffusion --baseline \$TRADEOFF_RUNS/gpt2 --judge \$TRADEOFF_RUNS/judge; fi"
)
SLACK_S=20  # at least this much of the total is left over by the budgets (start-up, kill grace)
# parts that measure and write their results as they go: a timeout there keeps what was measured
# and is listed, but does not fail the run (a timeout of the environment or the tests does)
MEASURING="kernel-timings traffic end-to-end tradeoff"

plan() {
  echo "bench/gpu.sh plan ($([ "$MODE" = rehearse ] && echo 'rehearsal on the CPU' || echo 'GPU run'), total budget ${TOTAL_S} s, results in ${OUT}):"
  local sum=0
  for part in "${PARTS[@]}"; do
    IFS='|' read -r name budget cmd <<<"$part"
    sum=$((sum + budget))
    printf '  %-15s %4d s  %s\n' "$name" "$budget" "$cmd"
  done
  echo "  sum of part budgets: ${sum} s (slack ${SLACK_S} s needed, $((TOTAL_S - sum)) s left over)"
  if [ $((sum + SLACK_S)) -gt "$TOTAL_S" ]; then
    echo "bench/gpu.sh: the part budgets (${sum} s) leave less than ${SLACK_S} s of the total (${TOTAL_S} s)" >&2
    return 1
  fi
}

if [ "$DRY_RUN" = 1 ]; then
  plan
  exit $?
fi
# the repository on the import path: dbert_kernels from the root, dbert_model (model/) by a link
if ! $PY -c 'import dbert_model' 2>/dev/null; then
  LINKS=$(mktemp -d)
  ln -s "$PWD/model" "$LINKS/dbert_model"
  export PYTHONPATH="$PWD:$LINKS${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.triton-cache}
mkdir -p "$TRITON_CACHE_DIR"
if [ "$MODE" = rehearse ]; then
  export TRITON_INTERPRET=1 DBERT_GPU_REHEARSE=1 DBERT_NATIVE=0
  CARD=rehearse_cpu
else
  if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "bench/gpu.sh: no CUDA GPU visible to $PY (bash bench/gpu.sh --dry-run prints the plan, --rehearse runs it on the CPU)" >&2
    exit 2
  fi
  unset TRITON_INTERPRET DBERT_GPU_REHEARSE
  CARD=$($PY -c "import re, torch; print(re.sub(r'[^A-Za-z0-9]+', '_', torch.cuda.get_device_name()).strip('_'))")
fi
export PY
mkdir -p "$OUT"
LOG="$OUT/gpu_${CARD}.txt"
plan | tee "$LOG" || exit 1
skipped=()
failed=()
cut=()
for part in "${PARTS[@]}"; do
  IFS='|' read -r name budget cmd <<<"$part"
  left=$((TOTAL_S - SECONDS))
  if [ "$budget" -gt "$left" ]; then
    skipped+=("$name (needs ${budget} s, ${left} s left)")
    continue
  fi
  echo "== $name (budget ${budget} s, ${left} s left) on $CARD" | tee -a "$LOG"
  start=$SECONDS
  timeout -k 10 "$budget" bash -c "$cmd" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    if [[ " $MEASURING " == *" $name "* ]]; then
      cut+=("$name (timed out after ${budget} s; its results so far are written)")
    else
      failed+=("$name (exit $rc, timed out)")
    fi
  elif [ "$rc" -ne 0 ]; then
    failed+=("$name (exit $rc)")
  fi
done
{
  echo "== summary on $CARD after ${SECONDS} s (results in $OUT)"
  echo "skipped: ${skipped[*]:-none}"
  echo "cut by their budget: ${cut[*]:-none}"
  echo "failed: ${failed[*]:-none}"
} | tee -a "$LOG"
# a skipped or cut part fails a rehearsal (its budgets are too small), not a GPU run
[ "${#failed[@]}" -eq 0 ] && { [ "$MODE" != rehearse ] || [ "$((${#skipped[@]} + ${#cut[@]}))" -eq 0 ]; }
