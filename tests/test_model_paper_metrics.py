"""The last gaps to the authors' metrics (issue 27, item 2): empty samples in the per-sample
BLEU / Self-BLEU means, ``dbert eval --reveal``, and word-frequency counts without [CLS] / [SEP]."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from dbert_kernels import OPTIONS
from dbert_model import encode, load_corpus, token_counts
from dbert_model.checkpoint import load_checkpoint
from dbert_model.cli import main
from dbert_model.evaluate import bleu4, bleu4_mean, empty_samples, paper_metrics, self_bleu, self_bleu_mean

from .model_fixtures import CORPUS, MAX_LEN, VOCAB, settings, tiny_model, tokenizer, train_ids

# ---------------------------------------------------------------- the authors' compute_metric.py


def _authors_bleu(lines: list[str], references: list[str]) -> float:
    """``compute_quality_in_unconditional_gen`` on a sample file of ``lines``."""
    from nltk.translate.bleu_score import corpus_bleu

    corpus = [[r.split(" ") for r in references]]
    data = [line.strip().split(" ") for line in lines]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(corpus_bleu(corpus, [d]) for d in data) / len(data)


def _authors_self_bleu(lines: list[str]) -> float:
    """``self_bleu_for_unconditional_generation`` on a sample file of ``lines``."""
    from nltk.translate.bleu_score import corpus_bleu

    data = [line.strip().split(" ") for line in lines]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(corpus_bleu([data[:i] + data[i + 1 :]], [data[i]]) for i in range(len(data))) / len(data)


def test_an_empty_sample_counts_as_zero_in_the_means() -> None:
    ref = "the cat sat on the mat"
    assert bleu4_mean(["", ref], [ref]) == 0.5  # the example: 1.0 before (the empty sample was dropped)
    assert _authors_bleu(["", ref], [ref]) == 0.5
    # the pooled score still leaves it out
    assert bleu4(["", ref], [ref]) == pytest.approx(1.0)
    # Self-BLEU: two equal samples score 1 each, the empty one 0, and it is among their references
    assert self_bleu_mean([ref, "", ref]) == pytest.approx(2 / 3)
    assert self_bleu([ref, "", ref]) == pytest.approx(1.0)
    assert empty_samples(["", " ", ref, "a"]) == 2


@pytest.mark.parametrize("samples", [
    ["the cat sat on the mat", "", "a dog ran in the park", "the cat ran in the park today"],
    ["", "", "the dog sat on the mat in the park", "the cat sat on the mat"],
    ["the cat sat", "", "the cat sat"],  # short: the empty sample's [''] is the closest reference length
])
def test_the_means_equal_the_authors_code_with_empty_samples(samples) -> None:
    refs = ["the cat sat on the mat", "a dog ran in the park at noon", "the cat ran in the park"]
    assert bleu4_mean(samples, refs) == pytest.approx(_authors_bleu(samples, refs), rel=1e-12, abs=1e-300)
    assert self_bleu_mean(samples) == pytest.approx(_authors_self_bleu(samples), rel=1e-12, abs=1e-300)


def test_nothing_to_score_still_raises() -> None:
    with pytest.raises(ValueError, match="non-empty sample"):
        bleu4_mean(["", " "], ["a b c"])
    with pytest.raises(ValueError, match="two samples"):
        self_bleu_mean(["a b c"])
    with pytest.raises(ValueError, match="non-empty"):
        self_bleu_mean(["", ""])


def test_paper_metrics_count_the_empty_samples() -> None:
    from dbert_kernels import token_information

    split = encode(tokenizer(), load_corpus(CORPUS).valid[:8], MAX_LEN)
    info = token_information(token_counts(train_ids(), len(tokenizer().get_vocab()), tokenizer().pad_token_id))
    ref = "the cat sat on the mat"
    res = paper_metrics(tiny_model(), settings(), info, split, ["", ref, ref], [ref], batch_size=8)
    assert res["paper_empty_samples"] == 1.0
    assert res["paper_bleu4_mean"] == pytest.approx(2 / 3) and res["paper_bleu4_pooled"] == pytest.approx(1.0)
    assert res["paper_self_bleu4_mean"] == pytest.approx(2 / 3) and res["paper_self_bleu4_pooled"] == pytest.approx(1.0)


# ---------------------------------------------------------------- word-frequency counts


def test_token_counts_as_the_authors_word_freq() -> None:
    tok = tokenizer()
    sentences = load_corpus(CORPUS).train[:40] + ["A bird calls the lake every morning near the town and the farm."]
    ids = encode(tok, sentences, MAX_LEN).ids
    vocab = len(tok.get_vocab())
    # word_freq.py over the ids of dataloader.py (add_special_tokens=False, truncated like the rows' x)
    authors = torch.zeros(vocab, dtype=torch.int64)
    for row in tok(sentences, add_special_tokens=False, max_length=MAX_LEN - 2, truncation=True)["input_ids"]:
        for i in row:
            authors[i] += 1
    theirs = token_counts(ids, vocab, tok.pad_token_id, add_special_tokens=False)
    assert torch.equal(theirs, authors)
    assert theirs[tok.cls_token_id] == 0 and theirs[tok.sep_token_id] == 0 and theirs[tok.pad_token_id] == 0
    # the default is unchanged: [CLS] and [SEP] once per sentence, everything else the same
    ours = token_counts(ids, vocab, tok.pad_token_id)
    assert ours[tok.cls_token_id] == len(sentences) and ours[tok.sep_token_id] == len(sentences)
    diff = ours - theirs
    diff[tok.cls_token_id] = diff[tok.sep_token_id] = 0
    assert not diff.any()
    # an all-padding row counts nothing either way; other shapes are refused
    padded = torch.cat([ids, torch.full((1, MAX_LEN), tok.pad_token_id)])
    assert torch.equal(token_counts(padded, vocab, tok.pad_token_id, add_special_tokens=False), theirs)
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        token_counts(ids.reshape(-1), vocab, tok.pad_token_id, add_special_tokens=False)


def test_the_authors_counts_change_the_code_form_information() -> None:
    from dbert_kernels import token_information

    tok = tokenizer()
    ids = train_ids(64)
    vocab = len(tok.get_vocab())
    ours = token_counts(ids, vocab, tok.pad_token_id)
    theirs = token_counts(ids, vocab, tok.pad_token_id, add_special_tokens=False)
    w_ours, w_theirs = token_information(ours, "code"), token_information(theirs, "code")
    assert w_theirs[tok.cls_token_id] == 0 and w_theirs.max() == 1
    # every sentence has one [CLS]: when no word is that frequent, it was the normaliser
    if int(theirs.max()) < len(ids):
        assert w_ours[tok.cls_token_id] == 1 and bool((w_theirs >= w_ours).all())


# ---------------------------------------------------------------- dbert eval --reveal


@pytest.fixture(scope="module")
def spindle_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_metrics") / "run"
    assert main(["train", "--out", str(out), "--data", str(CORPUS), "--tokenizer", str(VOCAB), "--init", "tiny",
                 "--schedule", "spindle", "--max-len", "16", "--batch-size", "8", "--steps", "2", "--eval-every", "2",
                 "--eval-sentences", "4", "--warmup", "1", "--no-progress"]) == 0
    return out


def _spy_generate(monkeypatch) -> list[dict]:
    import dbert_model.generation as generation

    calls: list[dict] = []
    real = generation.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "generate", spy)
    return calls


def test_eval_paper_metrics_with_the_authors_reveal(spindle_run, monkeypatch, capsys) -> None:
    loaded = load_checkpoint(spindle_run)
    assert loaded.settings.build_schedule().is_spindle
    calls = _spy_generate(monkeypatch)
    capsys.readouterr()
    assert main(["eval", "--model", str(spindle_run), "--steps", "4", "--samples", "4", "--max-sentences", "8",
                 "--paper-metrics", "--reveal", "authors", "--no-progress", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["reveal"] == "authors" and 0 <= res["paper_bleu4_mean"] <= 1
    assert 0 <= res["paper_empty_samples"] <= 4 and res["empty_samples"] >= 0
    # both samplings (the --steps one and the 128-step one) use the authors' rule with the spindle information
    assert [(c["steps"], c.get("reveal")) for c in calls] == [(4, "authors"), (128, "authors")]
    assert all(c["token_info"] is not None for c in calls)
    # the default stays the exact posterior
    calls.clear()
    assert main(["eval", "--model", str(spindle_run), "--steps", "4", "--samples", "2", "--max-sentences", "4",
                 "--no-progress", "--json"]) == 0
    # no --reveal: the strategy's own default (the exact posterior) applies
    assert json.loads(capsys.readouterr().out)["reveal"] == "exact" and [c.get("reveal") for c in calls] == [None]
    assert OPTIONS["reveal"].default == "exact"


def test_eval_says_how_many_samples_were_empty(spindle_run, monkeypatch, capsys) -> None:
    import dbert_model.generation as generation

    def decode(tokenizer, ids, settings):  # the first sample: [SEP] right after [CLS]; the others fixed
        return ["", *["the farmer watches the garden every morning ."] * (ids.shape[0] - 1)]

    monkeypatch.setattr(generation, "decode", decode)
    capsys.readouterr()
    assert main(["eval", "--model", str(spindle_run), "--steps", "2", "--samples", "3", "--max-sentences", "4",
                 "--paper-metrics", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "1 empty samples left out of BLEU / Self-BLEU" in text
    assert "1 empty samples: 0 in the means (as the authors' code), left out of the pooled scores" in text


@pytest.mark.parametrize("value", ["author", "EXACT", ""])
def test_a_bad_reveal_is_one_line_and_exit_2(tmp_path, capsys, value) -> None:
    capsys.readouterr()
    # the model does not even exist: the flag is checked first
    assert main(["eval", "--model", str(tmp_path / "none"), "--paper-metrics", "--reveal", value]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dbert eval: error: --reveal") and "Traceback" not in err


def test_train_stores_the_authors_counts_when_asked(tmp_path) -> None:
    """``dbert train --no-count-special-tokens``: the checkpoint's token counts are the authors'
    (``[CLS]`` / ``[SEP]`` count 0); by default they include them, as every earlier checkpoint's."""
    tok = tokenizer()
    runs = {}
    for flag in ("--count-special-tokens", "--no-count-special-tokens"):
        out = tmp_path / flag.strip("-")
        assert main(["train", "--out", str(out), "--data", str(CORPUS), "--tokenizer", str(VOCAB), "--init", "tiny",
                     "--schedule", "spindle", "--max-len", "16", "--batch-size", "8", "--steps", "1",
                     "--eval-every", "1", "--eval-sentences", "4", "--warmup", "0", "--no-progress", flag]) == 0
        runs[flag] = load_checkpoint(out).token_counts
    ours, theirs = runs["--count-special-tokens"], runs["--no-count-special-tokens"]
    assert int(ours[tok.cls_token_id]) > 0 and int(ours[tok.sep_token_id]) > 0
    assert int(theirs[tok.cls_token_id]) == 0 and int(theirs[tok.sep_token_id]) == 0
    words = torch.ones_like(ours, dtype=torch.bool)
    words[[tok.cls_token_id, tok.sep_token_id]] = False
    assert torch.equal(ours[words], theirs[words])
