"""The DiffusionBERT network: time designs, row-restricted head, pretrained MiniLM init."""

from __future__ import annotations

import pytest
import torch

from dbert_model import build_masked_lm, build_model, diffusion_loss, minilm_path
from dbert_model.network import DiffusionBert, sinusoidal_embedding
from dbert_model.settings import DiffusionSettings

from .model_fixtures import MAX_LEN, counts, settings, tiny_model, train_ids


@pytest.mark.parametrize("design", ["tad", "lte", "pte"])
def test_each_time_design_runs_forward_and_backward(design: str) -> None:
    model = tiny_model(design)
    ids = train_ids(8)
    s = settings(time_design=design)
    from dbert_kernels import token_information

    out = diffusion_loss(model, ids, settings=s, token_info=token_information(counts(ids)), seed=3)
    assert torch.isfinite(out.loss) and out.n_masked > 0
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["mlm.bert.embeddings.word_embeddings.weight"].abs().sum() > 0
    if design == "lte":
        assert all(grads[f"time_mlps.{i}.net.2.weight"].abs().sum() > 0 for i in range(2))
    if design == "pte":
        assert grads["time_mlp.net.2.weight"].abs().sum() > 0 and grads["time_token"].abs().sum() > 0


@pytest.mark.parametrize("design", ["tad", "lte", "pte"])
def test_rows_select_the_same_logits_as_the_full_output(design: str) -> None:
    model = tiny_model(design).eval()
    ids = train_ids(4)
    t = torch.tensor([10.0, 300.0, 600.0, 990.0])
    rows = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.4
    full = model(ids, t=t)
    assert full.shape == (*ids.shape, model.vocab_size)
    torch.testing.assert_close(model(ids, t=t, rows=rows), full[rows], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("design", ["lte", "pte"])
def test_time_init_zero_starts_time_free_and_normal_does_not(design: str) -> None:
    ids = train_ids(2)
    tad = tiny_model("tad").eval()
    for init in ("zero", "normal"):
        torch.manual_seed(0)
        model = DiffusionBert(tiny_model("tad").mlm, design, 1000.0, time_init=init).eval()
        early, late = model(ids, t=torch.tensor([5.0, 5.0])), model(ids, t=torch.tensor([900.0, 900.0]))
        if init == "zero":  # the last layer starts at zero: the time vector is constant (0 for LTE)
            torch.testing.assert_close(early, late)
            if design == "lte":
                torch.testing.assert_close(early, tad(ids))
        else:
            assert (early - late).abs().max() > 1e-6
    with pytest.raises(ValueError, match="time_init"):
        DiffusionBert(tiny_model("tad").mlm, design, 1000.0, time_init="bogus")


@pytest.mark.parametrize("design", ["lte", "pte"])
def test_time_designs_depend_on_t_and_tad_does_not(design: str) -> None:
    model = tiny_model(design).eval()
    ids = train_ids(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    a, b = model(ids, t=torch.tensor([5.0, 5.0])), model(ids, t=torch.tensor([900.0, 900.0]))
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="needs the time"):
        model(ids)
    tad = tiny_model("tad").eval()
    torch.testing.assert_close(tad(ids, t=torch.tensor([5.0, 5.0])), tad(ids, t=None))


def test_sinusoidal_embedding_is_scale_free() -> None:
    a = sinusoidal_embedding(torch.tensor([0.0, 250.0, 1000.0]), 1000.0, 16)
    b = sinusoidal_embedding(torch.tensor([0.0, 0.5, 2.0]), 2.0, 16)
    torch.testing.assert_close(a, b)
    assert a.shape == (3, 16)


def test_pte_keeps_the_vocabulary_and_sequence_length(tmp_path) -> None:
    source = tiny_model("tad").mlm
    source.save_pretrained(tmp_path / "pretrained")
    model = build_model(str(tmp_path / "pretrained"), time_design="pte")
    words = model.mlm.get_input_embeddings().weight
    assert words.shape[0] == source.config.vocab_size == model.vocab_size
    torch.testing.assert_close(words, source.get_input_embeddings().weight)  # no row overwritten
    ids = train_ids(3)
    assert model(ids, t=torch.full((3,), 500.0)).shape == (3, MAX_LEN, model.vocab_size)
    with pytest.raises(ValueError, match="t must be"):
        model(ids, t=torch.ones(2))


def test_minilm_init_builds_a_tied_mlm_head() -> None:
    mlm = build_masked_lm("minilm")
    assert mlm.config.vocab_size == 30522 and mlm.config.num_hidden_layers == 6
    emb = mlm.get_input_embeddings().weight
    assert mlm.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    from safetensors import safe_open

    with safe_open(str(minilm_path() / "model.safetensors"), "pt") as f:
        key = next(k for k in f.keys() if k.endswith("word_embeddings.weight"))
        torch.testing.assert_close(f.get_tensor(key), emb.detach())
    assert float(mlm.cls.predictions.bias.detach().abs().sum()) == 0.0


def test_build_errors_are_clear(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no model at"):
        build_masked_lm(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="time_design"):
        DiffusionSettings(time_design="xyz")
    with pytest.raises(ValueError, match="integer number of steps"):
        DiffusionSettings(T=10.5)
