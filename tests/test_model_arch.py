"""The architecture interface: a third architecture is one class plus one registry line.

A toy bigram language model is registered from this test and driven through dbert's own code
paths: ``train()`` (build, loss, validation, samples, save, resume), the generic loader and the
``dbert train --arch`` / ``dbert generate`` commands.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dbert_model import DiffusionSettings, TrainConfig, train
from dbert_model.arch import (
    DEFAULT_SAMPLING,
    Architecture,
    StepLoss,
    architecture_names,
    architecture_of,
    get_architecture,
    load_model,
    register,
    unregister,
)
from dbert_model.checkpoint import resolve_checkpoint
from dbert_model.cli import main

from .model_fixtures import CORPUS, VOCAB

# -- the toy architecture (what a new module would hold) ---------------------------------------


def _toy_config_class():
    from transformers import PretrainedConfig

    class ToyConfig(PretrainedConfig):
        model_type = "dbert-toy-bigram"

        def __init__(self, vocab_size: int = 0, **kwargs) -> None:
            super().__init__(**kwargs)
            self.vocab_size = vocab_size

    return ToyConfig


class Bigram(nn.Module):
    """logits of the next token = a row of a [V, V] table indexed by the current token."""

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)


class ToyArchitecture(Architecture):
    name = "toy"
    model_types = ("dbert-toy-bigram",)

    def build(self, cfg, settings):
        return Bigram(_toy_config_class()(vocab_size=settings.vocab_size))

    def network(self, path):
        return Bigram(_toy_config_class().from_json_file(str(path / "config.json")))

    def describe(self, settings):
        return "toy bigram"

    def loss(self, model, ids, *, settings, info, cfg, step, shard):
        pad = settings.special_ids["pad"]
        total = int((ids[:, 1:] != pad).sum())
        ids = ids[shard]
        targets, keep = ids[:, 1:], ids[:, 1:] != pad
        ce = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
        ce = ce * keep
        return StepLoss(ce.sum() / max(total, 1), float(ce.sum()), float(keep.sum()))

    @torch.no_grad()
    def validate(self, model, settings, info, split, cfg):
        ids = split.ids[: cfg.eval_sentences]
        out = self.loss(model, ids, settings=settings, info=info, cfg=cfg, step=0, shard=slice(None))
        res = {"nats_per_token": out.ce_sum / out.counted, "perplexity": math.exp(out.ce_sum / out.counted)}
        return res, f"toy PPL {res['perplexity']:.1f}"

    @torch.no_grad()
    def sample(self, model, settings, tokenizer, *, n, sampling=DEFAULT_SAMPLING, seq_len=None, steps=32,
               progress=False, token_counts=None, **options):
        sp = settings.special_ids
        temperature = sampling.temperature
        gen = torch.Generator().manual_seed(sampling.seed)
        ids = torch.full((n, seq_len or settings.max_len), sp["cls"], dtype=torch.int64)
        for i in range(1, ids.shape[1]):
            logits = model(ids[:, i - 1]).float() / temperature
            logits[:, [sp["cls"], sp["mask"], sp["pad"], sp["unk"]]] = -math.inf
            ids[:, i] = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
        return ids, None


@pytest.fixture
def toy():
    register(ToyArchitecture())  # the one registry line
    yield get_architecture("toy")
    unregister("toy")


def _config(out, **overrides) -> TrainConfig:
    diffusion_fields = {f.name for f in fields(DiffusionSettings)}
    base = dict(out=str(out), arch="toy", data=str(CORPUS), init="tiny", tokenizer=str(VOCAB), batch_size=8, lr=0.1,
                warmup_steps=1, max_steps=6, eval_every=3, eval_sentences=16, save_every=100, log_every=3,
                sample_every=6, progress=False)
    base.update({k: v for k, v in overrides.items() if k not in diffusion_fields})
    return TrainConfig(**base, diffusion=DiffusionSettings(max_len=12))


def test_builtin_architectures_are_registered() -> None:
    assert {"diffusion", "gpt2"} <= set(architecture_names())
    assert get_architecture("gpt2").name == "gpt2" and get_architecture("diffusion").paper_metrics
    with pytest.raises(ValueError, match="arch must be one of"):
        get_architecture("lstm")
    with pytest.raises(ValueError, match="arch must be one of"):
        TrainConfig(arch="toy")  # not registered outside the fixture


def test_a_toy_architecture_trains_saves_resumes_loads_and_generates(toy, tmp_path, capsys) -> None:
    lines: list[str] = []
    straight = train(_config(tmp_path / "a"), log=lines.append)
    assert straight.steps == 6 and [h["step"] for h in straight.history] == [3, 6]
    assert straight.history[-1]["loss"] < straight.history[0]["loss"]  # it learns
    assert any("toy bigram" in line for line in lines) and any("toy PPL" in line for line in lines)
    assert "sample: " in capsys.readouterr().out  # the sample hook ran at step 6
    state = json.loads((resolve_checkpoint(tmp_path / "a") / "trainer_state.json").read_text())
    assert state["config"]["arch"] == "toy"
    assert architecture_of(tmp_path / "a") is toy and architecture_of(tmp_path / "none").name == "diffusion"

    # resume: stop between two log lines, continue, same weights and same history
    train(_config(tmp_path / "b", stop_after=4), log=lambda _: None)
    resumed = train(_config(tmp_path / "b"), log=lambda _: None)
    strip = [{k: v for k, v in h.items() if k != "elapsed_s"} for h in straight.history]
    assert [{k: v for k, v in h.items() if k != "elapsed_s"} for h in resumed.history] == strip

    loaded = load_model(tmp_path / "a")
    b = load_model(tmp_path / "b")
    assert loaded.arch == "toy" and isinstance(loaded.model, Bigram) and not loaded.model.training
    assert torch.equal(loaded.model.table.weight, b.model.table.weight)
    with pytest.raises(ValueError, match="another architecture"):
        train(_config(tmp_path / "a", arch="diffusion", max_steps=8), log=lambda _: None)

    # the dbert command: train a new run with --arch toy, generate from it
    capsys.readouterr()
    assert main(["train", "--arch", "toy", "--out", str(tmp_path / "c"), "--data", str(CORPUS), "--tokenizer", str(VOCAB),
                 "--init", "tiny", "--max-len", "12", "--batch-size", "8", "--steps", "3", "--eval-every", "3",
                 "--eval-sentences", "8", "--lr", "0.1", "--no-progress"]) == 0
    assert "toy PPL" in capsys.readouterr().out
    for run in (tmp_path / "a", tmp_path / "c"):
        assert main(["generate", "--model", str(run), "-n", "3", "--seed", "2", "--no-progress"]) == 0
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 3 and out[0].startswith("[0] ")
    assert main(["generate", "--model", str(tmp_path / "a"), "-n", "3", "--seed", "2", "--no-progress", "--show-ids"]) == 0
    ids = [json.loads(line.split("ids: ")[1]) for line in capsys.readouterr().out.splitlines() if "ids: " in line]
    assert len(ids) == 3 and all(len(row) == 12 and row[0] == loaded.settings.special_ids["cls"] for row in ids)


def test_load_model_dispatches_the_builtin_architectures(tmp_path) -> None:
    from dbert_model.ar import LoadedAR
    from dbert_model.checkpoint import LoadedModel

    common = dict(data=str(CORPUS), init="tiny", tokenizer=str(VOCAB), batch_size=8, max_steps=1, eval_every=1,
                  eval_sentences=4, save_every=1, log_every=1, progress=False, diffusion=DiffusionSettings(max_len=12))
    train(TrainConfig(out=str(tmp_path / "g"), arch="gpt2", **common), log=lambda _: None)
    train(TrainConfig(out=str(tmp_path / "d"), **common), log=lambda _: None)
    g, d = load_model(tmp_path / "g"), load_model(tmp_path / "d")
    assert isinstance(g, LoadedAR) and g.arch == "gpt2" and architecture_of(tmp_path / "g").name == "gpt2"
    assert isinstance(d, LoadedModel) and d.arch == "diffusion"
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "none")
