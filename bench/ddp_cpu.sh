#!/usr/bin/env bash
# Steps/s of `dbert train` on 1 process vs 2 data-parallel CPU processes (torchrun, gloo), same
# global batch, same model and data. Usage: bash bench/ddp_cpu.sh [steps]
# The model: a 4-layer, 256-hidden BERT without dropout on the test fixture's 64-token vocabulary
# (written to $WORK/init), batch 32 of 16 tokens.
set -euo pipefail
STEPS=${1:-40}
WORK=${WORK:-$(mktemp -d)}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
python - "$WORK/init" "$ROOT/tests/fixtures/tiny_vocab.txt" <<'PY'
import sys, torch
from transformers import BertConfig, BertForMaskedLM
from dbert_model import load_tokenizer
tok = load_tokenizer(sys.argv[2])
cfg = BertConfig(vocab_size=len(tok.get_vocab()), hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=1024, max_position_embeddings=32, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0)
torch.manual_seed(0)
BertForMaskedLM(cfg).save_pretrained(sys.argv[1])
tok.save_pretrained(sys.argv[1])
PY
ARGS=(--data "$ROOT/tests/fixtures/tiny_corpus.txt" --init "$WORK/init" --max-len 16 --batch-size 32 --steps "$STEPS"
      --lr 1e-3 --warmup 1 --log-every "$STEPS" --eval-every 100000 --eval-sentences 8 --save-every 100000
      --device cpu --no-progress)
run() { "$@" 2>&1 | grep -E "steps/s" | sed 's/.*(step/(step/'; }
echo "1 process, OMP_NUM_THREADS=2: $(OMP_NUM_THREADS=2 run python -m dbert_model.cli train --out "$WORK/one2" "${ARGS[@]}")"
echo "1 process, OMP_NUM_THREADS=1: $(OMP_NUM_THREADS=1 run python -m dbert_model.cli train --out "$WORK/one1" "${ARGS[@]}")"
echo "2 processes (torchrun, gloo), OMP_NUM_THREADS=1 each: $(OMP_NUM_THREADS=1 run python -m torch.distributed.run --standalone --nproc_per_node 2 -m dbert_model.cli train --out "$WORK/two" "${ARGS[@]}")"
python - "$WORK" <<'PY'
import sys
from safetensors.torch import load_file
from dbert_model.checkpoint import resolve_checkpoint
w = {r: load_file(str(resolve_checkpoint(f"{sys.argv[1]}/{r}") / "model.safetensors")) for r in ("one2", "one1", "two")}
for r in ("one1", "two"):
    print(f"max |param difference| {r} vs one2: {max(float((w[r][k] - w['one2'][k]).abs().max()) for k in w[r]):.2e}")
PY
