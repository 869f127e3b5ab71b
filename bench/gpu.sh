#!/usr/bin/env bash
# The GPU benchmark in one command: kernels (every CUDA backend against the reference path) and
# end to end (bert-base DiffusionBERT against GPT-2 124M, KV cache and static cache + torch.compile).
# Sized to finish in under 8 minutes on an H100: --budget-s stops starting new measurements after
# 6 minutes (whatever is cut is listed as skipped in the results). Results go to bench/results/.
#
#   bash bench/gpu.sh [extra python -m bench arguments, e.g. --note "..."]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'bench/gpu.sh needs a CUDA GPU')"
exec "$PYTHON" -m bench --device cuda --only kernels,e2e --budget-s "${BENCH_BUDGET_S:-360}" "$@"
