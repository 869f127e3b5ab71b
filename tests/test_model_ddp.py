"""Data-parallel training: 2 CPU processes (torchrun, gloo) train the same model as 1 process.

The init model has no dropout (dropout masks depend on how the batch is split; data order, times
and masks do not), so a 2-process run and a 1-process run with the same global batch end with the
same parameters up to float summation order: |difference| <= 1e-6 after 4 AdamW steps at lr 3e-3
(the GPT-2 baseline, whose init copies that BERT's dropout-free shape: <= 1e-5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dbert_model import train
from dbert_model.checkpoint import read_trainer_state, resolve_checkpoint
from dbert_model.cli import main

from .model_fixtures import CORPUS, tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-6


def _init_without_dropout(path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    tok = tokenizer()
    cfg = BertConfig(vocab_size=len(tok.get_vocab()), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=20, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    BertForMaskedLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)


def _args(init: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(out), "--data", str(CORPUS), "--init", str(init), "--max-len", "12",
            "--batch-size", "8", "--steps", "4", "--lr", "3e-3", "--warmup", "1", "--log-every", "1",
            "--eval-every", "100", "--eval-sentences", "8", "--save-every", "2", "--device", "cpu", "--no-progress",
            *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(resolve_checkpoint(path) / "model.safetensors"))


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tolerance: float = TOLERANCE) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= tolerance, worst


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_a_one_process_checkpoint(tmp_path) -> None:
    init = tmp_path / "init"
    _init_without_dropout(init)
    one, half = tmp_path / "one", tmp_path / "half"
    assert main(_args(init, one)) == 0
    assert main(_args(init, tmp_path / "gpt_one", "--arch", "gpt2")) == 0
    train(_stopped(init, half), log=lambda _: None)  # a 1-process run stopped at step 2: what 2 processes resume
    assert read_trainer_state(half)["step"] == 2

    driver = tmp_path / "driver.py"
    driver.write_text(
        "import json, sys\n"
        "from dbert_model.cli import main\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    assert main(argv) == 0\n"
    )
    runs = [_args(init, tmp_path / "two"), _args(init, half), _args(init, tmp_path / "two_accum", "--grad-accum", "2"),
            _args(init, tmp_path / "gpt_two", "--arch", "gpt2", "--grad-accum", "2")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / ".pp"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver),
         json.dumps(runs)], capture_output=True, text=True, env=env, timeout=600,
    )
    first_rank0 = next((i for i, line in enumerate(proc.stderr.splitlines()) if "[rank0]" in line), None)
    rank0 = "\n".join(proc.stderr.splitlines()[first_rank0:][:40]) if first_rank0 is not None else ""
    assert proc.returncode == 0, rank0 + "\n...\n" + proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "x 2 processes, global batch 8 = 2 x 1 x 4" in proc.stdout
    assert proc.stdout.count("done: 4 steps") == 4  # printed by the main process only

    straight = _weights(one)
    _assert_close(_weights(tmp_path / "two"), straight)
    _assert_close(_weights(tmp_path / "two_accum"), straight)
    _assert_close(_weights(half), straight)  # resumed on 2 processes: the same data order, times and masks
    _assert_close(_weights(tmp_path / "gpt_two"), _weights(tmp_path / "gpt_one"), tolerance=1e-5)  # the GPT-2 baseline
    losses = {h["step"]: h["loss"] for h in read_trainer_state(one)["history"]}
    resumed = {h["step"]: h["loss"] for h in read_trainer_state(half)["history"]}
    assert resumed.keys() == losses.keys() == {1, 2, 3, 4}
    assert all(abs(resumed[s] - losses[s]) <= 1e-6 for s in losses), (resumed, losses)
    for run in ("two", "two_accum"):  # only the main process wrote: one checkpoint, the pointer
        assert sorted(p.name for p in (tmp_path / run).iterdir()) == ["checkpoint-00000004", "latest"]


def _stopped(init: Path, out: Path):
    from dataclasses import replace

    from dbert_model.cli import build_parser, train_config

    return replace(train_config(build_parser().parse_args(_args(init, out))), stop_after=2)


def test_shard_losses_sum_to_the_whole_batch_loss() -> None:
    from dbert_kernels import token_information
    from dbert_model.losses import diffusion_loss

    from .model_fixtures import counts, settings, tiny_model, train_ids

    ids = train_ids(12)
    s = settings()
    info = token_information(counts(train_ids()))
    model = tiny_model().eval()  # no dropout: the same network for every call
    whole = diffusion_loss(model, ids, settings=s, token_info=info, seed=3, offset=5)
    parts = [diffusion_loss(model, ids, settings=s, token_info=info, seed=3, offset=5, shard=slice(a, a + 4))
             for a in (0, 4, 8)]
    torch.testing.assert_close(sum(p.loss for p in parts), whole.loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.cat([p.nelbo for p in parts]), whole.nelbo, rtol=1e-5, atol=1e-6)
    assert sum(p.n_masked for p in parts) == whole.n_masked and all(p.n_tokens == whole.n_tokens for p in parts)
