#!/usr/bin/env bash
# GPU check of the Triton backend: the CUDA tests, then a short timing of each kernel against its
# reference twin. Results (named after the card) go to bench/results/. About 3-5 minutes on an H100.
#
#   bash bench/gpu_check.sh            # PYTHON=/path/to/python to choose the interpreter
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=bench/results
mkdir -p "$OUT"
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA GPU visible to $PY; nothing to do" >&2
  exit 2
fi
CARD=$($PY -c "import re, torch; print(re.sub(r'[^A-Za-z0-9]+', '_', torch.cuda.get_device_name()).strip('_'))")
unset TRITON_INTERPRET
echo "== CUDA tests on $CARD"
timeout 330 $PY -m pytest -q -p no:cacheprovider tests -m cuda 2>&1 | tee "$OUT/cuda_tests_$CARD.txt"
tests_rc=${PIPESTATUS[0]}
echo "== kernel timings on $CARD"
timeout 120 $PY bench/triton_gpu.py --out "$OUT"
bench_rc=$?
echo "gpu_check: tests exit $tests_rc, timings exit $bench_rc (results in $OUT/)"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
