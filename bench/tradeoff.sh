#!/usr/bin/env bash
# Speed against quality with trained models, in one command: trains DiffusionBERT, its GPT-2
# baseline (same size as MiniLM's 6 x 384, same tokenizer, corpus, data order, steps and
# schedule) and the judge (a GPT-2 of the same size, another seed, twice the steps), side by side,
# then runs the trade-off benchmark on them. Each training resumes where it stopped when the
# script is run again (the checkpoints are saved every 100 steps); logs go next to them.
#
#   bash bench/tradeoff.sh                      # full budget: STEPS=6000, about 1-2 hours of a free 16-core CPU
#   STEPS=1500 MINUTES=40 bash bench/tradeoff.sh   # what fits in 40 minutes
#   RUNS=/data/tradeoff DEVICE=cuda bash bench/tradeoff.sh
#
# Variables: RUNS (checkpoint directory, default runs/tradeoff), STEPS (optimiser steps of the
# two compared models; the judge gets 2 x STEPS), MINUTES (wall-clock cap of each training; the
# judge gets 1.5 x), DEVICE (cpu or cuda, default: cuda when available), THREADS (torch threads of
# the timing run, default 1 on the CPU). Extra arguments go to `python -m bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
RUNS="${RUNS:-runs/tradeoff}"
STEPS="${STEPS:-6000}"
MINUTES="${MINUTES:-110}"
DEVICE="${DEVICE:-$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
THREADS="${THREADS:-1}"
mkdir -p "$RUNS"
COMMON=(--init minilm --data builtin --max-len 64 --batch-size 16 --warmup 50 --eval-every 250
        --eval-sentences 128 --save-every 100 --log-every 25 --device "$DEVICE" --no-progress)
JUDGE_MINUTES=$("$PYTHON" -c "print(1.5 * $MINUTES)")
"$PYTHON" -m dbert_model.cli train --out "$RUNS/diffusion" "${COMMON[@]}" --lr 3e-4 --steps "$STEPS" \
    --minutes "$MINUTES" --seed 0 >>"$RUNS/diffusion.log" 2>&1 &
"$PYTHON" -m dbert_model.cli train --arch gpt2 --out "$RUNS/gpt2" "${COMMON[@]}" --lr 3e-4 --steps "$STEPS" \
    --minutes "$MINUTES" --seed 0 >>"$RUNS/gpt2.log" 2>&1 &
"$PYTHON" -m dbert_model.cli train --arch gpt2 --out "$RUNS/judge" "${COMMON[@]}" --lr 5e-4 \
    --steps $((2 * STEPS)) --minutes "$JUDGE_MINUTES" --seed 1 >>"$RUNS/judge.log" 2>&1 &
wait
THREAD_ARGS=()
if [ "$DEVICE" = cpu ]; then THREAD_ARGS=(--threads "$THREADS"); fi
exec "$PYTHON" -m bench --device "$DEVICE" "${THREAD_ARGS[@]}" --only tradeoff --checkpoint "$RUNS/diffusion" \
    --baseline "$RUNS/gpt2" --judge "$RUNS/judge" "$@"
