"""Training API: deterministic, resumable, refuses mismatched vocabularies and settings."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import torch
from safetensors.torch import load_file

from dbert_model import (
    DiffusionSettings,
    TrainConfig,
    VocabularyMismatchError,
    load_checkpoint,
    minilm_path,
    train,
)
from dbert_model.checkpoint import resolve_checkpoint

from .model_fixtures import CORPUS, VOCAB


def _config(out, **overrides) -> TrainConfig:
    """A tiny run; overrides that name a DiffusionSettings field go to ``TrainConfig.diffusion``."""
    diffusion_fields = {f.name for f in fields(DiffusionSettings)}
    diffusion = {"max_len": 16, **{k: v for k, v in overrides.items() if k in diffusion_fields}}
    base = dict(
        out=str(out), data=str(CORPUS), init="tiny", tokenizer=str(VOCAB), batch_size=16,
        lr=3e-3, warmup_steps=2, max_steps=8, eval_every=4, eval_sentences=16, save_every=4, log_every=2,
        progress=False,
    )
    base.update({k: v for k, v in overrides.items() if k not in diffusion_fields})
    return TrainConfig(**base, diffusion=DiffusionSettings(**diffusion))


def _quiet(_: str) -> None:
    pass


def test_training_is_deterministic_and_resume_continues_exactly(tmp_path) -> None:
    straight = train(_config(tmp_path / "a"), log=_quiet)
    assert straight.steps == 8 and [h["step"] for h in straight.history] == [2, 4, 6, 8]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in straight.history)
    assert train(_config(tmp_path / "b", stop_after=4), log=_quiet).steps == 4
    resumed = train(_config(tmp_path / "b", max_steps=8), log=_quiet)
    assert resumed.steps == 8
    a = load_file(str(resolve_checkpoint(tmp_path / "a") / "model.safetensors"))
    b = load_file(str(resolve_checkpoint(tmp_path / "b") / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads((resolve_checkpoint(tmp_path / "b") / "trainer_state.json").read_text())
    assert state["step"] == 8 and state["config"]["diffusion"]["time_design"] == "tad"
    loaded = load_checkpoint(tmp_path / "a")
    assert loaded.settings.schedule == "spindle" and loaded.settings.max_len == 16
    assert int(loaded.token_counts[loaded.settings.special_ids["pad"]]) == 0
    assert int(loaded.token_counts.sum()) > 0


def test_resume_with_other_settings_or_vocabulary_is_refused(tmp_path) -> None:
    train(_config(tmp_path / "a", max_steps=2, eval_every=2, save_every=2), log=_quiet)
    with pytest.raises(ValueError, match="cannot resume"):
        train(_config(tmp_path / "a", max_steps=4, time_design="lte"), log=_quiet)
    with pytest.raises(VocabularyMismatchError, match="different vocabulary"):
        train(_config(tmp_path / "a", max_steps=4, tokenizer=str(minilm_path() / "vocab.txt")), log=_quiet)


def test_init_model_with_another_vocabulary_is_refused(tmp_path) -> None:
    with pytest.raises(VocabularyMismatchError, match="vocabulary rows"):
        train(_config(tmp_path / "c", init="minilm"), log=_quiet)


@pytest.mark.parametrize("design,loss,bf16", [("lte", "mdlm", False), ("pte", "d3pm", True)])
def test_time_designs_and_losses_train_end_to_end(tmp_path, design: str, loss: str, bf16: bool) -> None:
    cfg = _config(tmp_path / design, time_design=design, loss=loss, schedule="d3pm", max_steps=4, bf16=bf16)
    result = train(cfg, log=_quiet)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert result.validation and result.validation[-1]["perplexity"] > 1
    assert load_checkpoint(tmp_path / design).model.time_design == design


def test_bad_training_arguments_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        train(_config(tmp_path / "x", batch_size=0), log=_quiet)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train(_config(tmp_path / "x", batch_size=1000), log=_quiet)
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        train(_config(tmp_path / "x", data=str(tmp_path / "none")), log=_quiet)


def test_config_composes_the_diffusion_settings_and_reads_the_flat_form() -> None:
    cfg = _config("x", time_design="lte", schedule="cosine", T=500.0)
    assert cfg.diffusion.time_design == "lte" and not hasattr(cfg, "time_design")
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    flat = {k: v for k, v in cfg.to_json().items() if k != "diffusion"}
    flat.update(time_design="lte", schedule="cosine", T=500.0, max_len=16, loss="d3pm")  # older checkpoints
    assert TrainConfig.from_json(flat) == cfg
    with pytest.raises(ValueError, match="JSON object"):
        TrainConfig.from_json([1, 2])


def test_schedule_names_resolve_through_the_schedule_constructors() -> None:
    from dbert_kernels import Schedule
    from dbert_model.settings import schedule_from_name

    assert schedule_from_name("spindle", T=10.0, spindle_lambda=0.2) == Schedule.spindle(0.2, "code", T=10.0)
    assert schedule_from_name("d3pm", T=10.0) == Schedule.d3pm(T=10.0)
    assert schedule_from_name("cosine", T=10.0) == Schedule.cosine(T=10.0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        schedule_from_name("build_schedule")


def test_another_process_write_test_file_is_not_a_foreign_file(tmp_path) -> None:
    """Under a multi-process launch every process checks --out at once: one process's temporary
    write-test file must not make another refuse the directory as someone else's."""
    from dbert_model.train import check_output_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / ".write-test-abc123").write_text("")
    assert check_output_dir(out, resume=True, overwrite=False) is False
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a dbert checkpoint"):
        check_output_dir(out, resume=True, overwrite=False)
