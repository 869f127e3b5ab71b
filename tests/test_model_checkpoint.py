"""Checkpoints: save -> load -> generate is identical; vocabulary mismatches are refused."""

from __future__ import annotations

import pytest
import torch

from dbert_kernels import generate, token_information
from dbert_model import (
    VocabularyMismatchError,
    build_denoiser,
    decode,
    load_checkpoint,
    load_tokenizer,
    minilm_path,
    sample_ids,
    save_checkpoint,
)
from dbert_model.checkpoint import resolve_checkpoint
from dbert_model.generation import banned_ids

from .model_fixtures import counts, settings, tiny_model, tokenizer, train_ids


def _perturbed(design: str):
    model = tiny_model(design)
    with torch.no_grad():  # make the zero-initialised time layers matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("design", ["tad", "lte", "pte"])
def test_save_load_generate_gives_identical_ids(tmp_path, design: str) -> None:
    tok = tokenizer()
    s = settings(tok, time_design=design)
    model = _perturbed(design)
    c = counts(train_ids())
    save_checkpoint(tmp_path / "ckpt", model, s, tok, c)
    before = sample_ids(model, s, tok, n=3, steps=6, seed=7, progress=False)
    loaded = load_checkpoint(tmp_path / "ckpt")
    after = sample_ids(loaded.model, loaded.settings, loaded.tokenizer, n=3, steps=6, seed=7, progress=False)
    assert torch.equal(before, after)
    assert loaded.settings == s and torch.equal(loaded.token_counts, c)
    torch.testing.assert_close(loaded.token_info(), token_information(c))
    other = sample_ids(loaded.model, loaded.settings, loaded.tokenizer, n=3, steps=6, seed=8, progress=False)
    assert not torch.equal(before, other)
    # generated ids never hold [CLS] (after position 0), [MASK], [UNK] or [unusedX]
    assert not torch.isin(before[:, 1:], torch.tensor(banned_ids(tok, s))).any()
    assert before.shape == (3, s.max_len) and (before[:, 0] == s.special_ids["cls"]).all()
    assert all(isinstance(text, str) for text in decode(tok, before, s))


def test_build_denoiser_from_a_checkpoint_drives_generate(tmp_path) -> None:
    tok = tokenizer()
    s = settings(tok, time_design="lte")
    save_checkpoint(tmp_path / "ckpt", _perturbed("lte"), s, tok, counts(train_ids()))
    den = build_denoiser(tmp_path / "ckpt")
    assert not den.model.training and den.model.time_design == "lte"
    ids = generate(den, mask_id=s.special_ids["mask"], batch_size=2, seq_len=8, steps=4,
                   banned_ids=banned_ids(tok, s), progress=False)
    assert ids.shape == (2, 8) and not (ids == s.special_ids["mask"]).any()
    rows = torch.zeros(2, 8, dtype=torch.bool)
    rows[0, 3] = rows[1, 5] = True
    assert den(ids, t=torch.tensor([500.0, 500.0]), rows=rows).shape == (2, s.vocab_size)


def test_a_checkpoint_with_a_different_vocabulary_is_refused(tmp_path) -> None:
    tok = tokenizer()
    save_checkpoint(tmp_path / "ckpt", tiny_model(), settings(tok), tok, counts(train_ids()))
    bert_vocab = load_tokenizer(minilm_path() / "vocab.txt")
    with pytest.raises(VocabularyMismatchError, match="different vocabulary"):
        load_checkpoint(tmp_path / "ckpt", tokenizer=bert_vocab)
    # same size, different ids: swapping two tokens is refused too
    words = (resolve_checkpoint(tmp_path / "ckpt") / "vocab.txt").read_text().splitlines()  # written with every checkpoint
    words[10], words[11] = words[11], words[10]
    (tmp_path / "swapped.txt").write_text("\n".join(words) + "\n")
    with pytest.raises(VocabularyMismatchError, match="token ids would mean different words"):
        load_checkpoint(tmp_path / "ckpt", tokenizer=load_tokenizer(tmp_path / "swapped.txt"))


def test_missing_or_broken_checkpoints_say_what_to_do(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="dbert train"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a dbert checkpoint"):
        load_checkpoint(tmp_path / "empty")
    tok = tokenizer()
    save_checkpoint(tmp_path / "ckpt", tiny_model("tad"), settings(tok, time_design="tad"), tok, counts(train_ids()))
    s = settings(tok, time_design="lte")  # weights without the time layers that the settings promise
    s.save(resolve_checkpoint(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match="does not match its settings"):
        load_checkpoint(tmp_path / "ckpt")
