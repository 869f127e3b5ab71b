"""Corpora: the built-in English corpus, user corpora, deterministic splits, tokenisation.

Built-in corpus (``"builtin"``): built at first use into ``<cache>/corpus-v1`` from files that
the ``gensim`` wheel ships in ``gensim/test/test_data`` (no download besides ``pip install``):

* the Lee corpus (``lee_background.cor`` + ``lee.cor``): ABC (Australian Broadcasting
  Corporation) news articles, 2001 - modern news sentences, the closest to One Billion Word;
* a Wikipedia sample (``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``,
  106 articles, CC BY-SA 3.0), markup stripped with ``gensim.corpora.wikicorpus.filter_wiki``.

Text is split into sentences with a simple rule (``. ! ?`` followed by a capital), filtered to
well-formed sentences of 6 to 40 words, de-duplicated, and split into train / valid / test by a
hash of each sentence (stable across runs, machines and Python versions). See docs/data.md.

A user corpus is a path: a text file (one sentence per line; split by hash), a directory with
``train.txt`` (+ ``valid.txt``, ``test.txt``), or a ``datasets`` dataset saved with
``save_to_disk`` (column ``text``).
"""

from __future__ import annotations

import bz2
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CorpusSplits",
    "EncodedSplit",
    "cache_dir",
    "prepare_builtin_corpus",
    "load_corpus",
    "split_by_hash",
    "split_sentences",
    "encode",
    "encode_cached",
    "token_counts",
]

CORPUS_VERSION = "corpus-v1"
SPLITS = ("train", "valid", "test")
_WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_LEE_FILES = ("lee_background.cor", "lee.cor")
_BAD_CHARS = re.compile(r"[|{}\[\]<>=_\\/#*~^@]")
_STRAY_PUNCT = re.compile(r"\s[.,;:)]|\(\s|,,|\.\.")  # left-overs of stripped templates
_ABBREVIATION = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|Gen|Col|Lt|Sgt|Capt|Gov|Sen|Rep|Rev|vs|No|U\.S|[A-Z])\.$")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(]?[A-Z])")


def cache_dir() -> Path:
    """``$DBERT_CACHE`` or ``~/.cache/dbert-kernels``."""
    return Path(os.environ.get("DBERT_CACHE", Path.home() / ".cache" / "dbert-kernels"))


@dataclass
class CorpusSplits:
    """Sentences of the three splits."""

    train: list[str]
    valid: list[str]
    test: list[str]
    source: str = ""


@dataclass
class EncodedSplit:
    """Tokenised sentences: ``ids`` ``[N, L]`` int64 as ``[CLS] x [SEP] [PAD]...``; ``words`` ``[N]``
    whitespace word counts of the original sentences (for perplexity per word); ``whole`` ``[N]``
    bool, False for sentences cut at ``max_len`` (their ELBO would cover fewer words than
    ``words`` counts, so the perplexity skips them). None: every sentence is whole."""

    ids: torch.Tensor
    words: torch.Tensor
    whole: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def split_sentences(text: str) -> list[str]:
    """Split running text into sentences (``. ! ?`` then a capital; not after Mr. Dr. etc.)."""
    text = re.sub(r"\s+", " ", text).strip()
    out: list[str] = []
    for piece in (s.strip() for s in _SENTENCE_END.split(text)):
        if not piece:
            continue
        if out and _ABBREVIATION.search(out[-1]):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def _well_formed(sentence: str) -> bool:
    words = sentence.split()
    if not 6 <= len(words) <= 40 or _BAD_CHARS.search(sentence) or _STRAY_PUNCT.search(sentence):
        return False
    if not sentence[0].isupper() or sentence[-1] not in ".!?\"'":
        return False
    letters = sum(c.isalpha() for c in sentence)
    return letters >= 0.7 * len(sentence.replace(" ", ""))


def _wiki_paragraphs(path: Path) -> Iterable[str]:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    with bz2.open(path) as handle:
        for _title, text, _pid in extract_pages(handle):
            if not text or text.lstrip().lower().startswith("#redirect"):
                continue
            for line in filter_wiki(text).splitlines():
                line = line.replace("'''", "").replace("''", "").strip()
                if line and not line.startswith(("=", "*", "|", "!", ":", ";", "{")):
                    yield re.sub(r"\(\s*[,;]?\s*\)", "", line)


def _gensim_test_data() -> Path:
    try:
        import gensim
    except ImportError as exc:
        raise ImportError(
            "the built-in corpus is read from files that the gensim wheel ships: `pip install gensim` "
            "(or pass your own corpus: --data path/to/sentences.txt)"
        ) from exc
    return Path(gensim.__file__).parent / "test" / "test_data"


def builtin_sentences() -> list[tuple[str, str]]:
    """``(source, sentence)`` pairs of the built-in corpus, in file order, well-formed only."""
    root = _gensim_test_data()
    out: list[tuple[str, str]] = []
    for name in _LEE_FILES:
        for line in (root / name).read_text(encoding="utf-8", errors="replace").splitlines():
            out.extend(("lee", s) for s in split_sentences(line) if _well_formed(s))
    for paragraph in _wiki_paragraphs(root / _WIKI_FILE):
        out.extend(("wiki", s) for s in split_sentences(paragraph) if _well_formed(s))
    return out


def _bucket(sentence: str) -> int:
    return int.from_bytes(hashlib.sha1(sentence.encode("utf-8")).digest()[:4], "big") % 1000


def split_by_hash(sentences: Iterable[str], valid_per_mille: int = 50, test_per_mille: int = 50) -> CorpusSplits:
    """De-duplicate and split by SHA-1 of each sentence (deterministic everywhere); order kept."""
    seen: set[str] = set()
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for sentence in sentences:
        if sentence in seen:
            continue
        seen.add(sentence)
        b = _bucket(sentence)
        name = "test" if b < test_per_mille else "valid" if b < test_per_mille + valid_per_mille else "train"
        splits[name].append(sentence)
    return CorpusSplits(**splits)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def prepare_builtin_corpus(root: str | Path | None = None, *, verbose: bool = False) -> Path:
    """Build the built-in corpus into ``root`` (default ``<cache>/corpus-v1``) once; return the directory."""
    root = Path(root) if root is not None else cache_dir() / CORPUS_VERSION
    if all((root / f"{name}.txt").is_file() for name in SPLITS):
        return root
    if verbose:
        print(f"building the built-in corpus (gensim's Lee news + Wikipedia sample) into {root}")
    pairs = builtin_sentences()
    splits = split_by_hash(s for _, s in pairs)
    root.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        _write_lines(root / f"{name}.txt", getattr(splits, name))
    by_source: dict[str, int] = {}
    for src, _ in pairs:
        by_source[src] = by_source.get(src, 0) + 1
    (root / "SOURCES.txt").write_text(
        "Built by dbert_model.data.prepare_builtin_corpus from gensim's test data.\n"
        f"sentences per source (before de-duplication): {by_source}\n"
        f"train/valid/test: {len(splits.train)}/{len(splits.valid)}/{len(splits.test)}\n"
        "Lee corpus: ABC news articles (Lee, Pincombe & Welsh 2005), as distributed with gensim (LGPL-2.1).\n"
        "Wikipedia sample: CC BY-SA 3.0, https://en.wikipedia.org (article text by Wikipedia contributors).\n"
    )
    if verbose:
        print(f"  {len(splits.train)} train / {len(splits.valid)} valid / {len(splits.test)} test sentences")
    return root


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_corpus(source: str | Path = "builtin", *, verbose: bool = False) -> CorpusSplits:
    """Sentences of ``source``: ``"builtin"``, a text file, a split directory or a saved dataset."""
    if str(source) == "builtin":
        root = prepare_builtin_corpus(verbose=verbose)
        return CorpusSplits(*(_read_lines(root / f"{n}.txt") for n in SPLITS), source=str(root))
    path = Path(source)
    if path.is_file():
        splits = split_by_hash(_read_lines(path))
        splits.source = str(path)
        return splits
    if path.is_dir() and (path / "train.txt").is_file():
        parts = {n: _read_lines(path / f"{n}.txt") if (path / f"{n}.txt").is_file() else [] for n in SPLITS}
        if not parts["valid"] or not parts["test"]:
            extra = split_by_hash(parts["train"])
            parts = {
                "train": extra.train,
                "valid": parts["valid"] or extra.valid,
                "test": parts["test"] or extra.test,
            }
        return CorpusSplits(**parts, source=str(path))
    if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json")):
        return _load_saved_dataset(path)
    files = _text_files(str(source))
    if files:
        splits = split_by_hash(line for f in files for line in _read_lines(f))
        splits.source = str(source)
        return splits
    cached = _load_cached_dataset(str(source)) if not path.exists() else None
    if cached is not None:
        return cached
    raise FileNotFoundError(
        f"corpus not found: {source!r}. Pass 'builtin', a text file with one sentence per line (or several: "
        "a,b or a glob), a directory with train.txt (valid.txt, test.txt), a datasets dataset saved with "
        "save_to_disk, or the name of a datasets dataset in the local cache"
    )


def _text_files(source: str) -> list[Path]:
    """The text files of ``a.txt,b.txt`` or of a glob pattern (``data/*.txt``), in order; [] if none."""
    import glob

    if "," not in source and not any(c in source for c in "*?["):
        return []
    files: list[Path] = []
    for part in (p.strip() for p in source.split(",")):
        matches = sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
        files.extend(Path(m) for m in matches if Path(m).is_file())
    return files


def _load_cached_dataset(name: str) -> CorpusSplits | None:
    """The ``datasets`` dataset ``name`` from the local cache (no download); None if it is not there."""
    try:
        import datasets
    except ImportError:
        return None
    offline = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        data: Any = datasets.load_dataset(name)
    except Exception:  # not cached (or not a dataset name): the caller reports "corpus not found"
        return None
    finally:
        datasets.config.HF_HUB_OFFLINE = offline
    return _dataset_splits(data, name)


def _load_saved_dataset(path: Path) -> CorpusSplits:
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(f"{path} is a saved `datasets` dataset: `pip install datasets` to read it") from exc
    return _dataset_splits(datasets.load_from_disk(str(path)), str(path))


def _dataset_splits(data: Any, path: str) -> CorpusSplits:
    """Train / valid / test sentences of a ``datasets`` Dataset or DatasetDict (column ``text``)."""
    import datasets

    def texts(ds: Any) -> list[str]:
        if "text" not in ds.column_names:
            raise ValueError(f"dataset {path} has no 'text' column (columns: {ds.column_names})")
        return [s.strip() for s in ds["text"] if s and s.strip()]

    if isinstance(data, datasets.DatasetDict):
        names = {"valid": ("validation", "valid"), "test": ("test",), "train": ("train",)}
        found = {k: next((data[n] for n in v if n in data), None) for k, v in names.items()}
        if found["train"] is None:
            raise ValueError(f"dataset {path} has no 'train' split (splits: {list(data)})")
        if found["valid"] is None or found["test"] is None:
            extra = split_by_hash(texts(found["train"]))
            return CorpusSplits(
                extra.train,
                texts(found["valid"]) if found["valid"] is not None else extra.valid,
                texts(found["test"]) if found["test"] is not None else extra.test,
                source=str(path),
            )
        return CorpusSplits(*(texts(found[n]) for n in SPLITS), source=str(path))
    splits = split_by_hash(texts(data))
    splits.source = str(path)
    return splits


def encode(tokenizer: Any, sentences: Sequence[str], max_len: int) -> EncodedSplit:
    """Tokenise to ``[CLS] x [SEP]`` padded with ``[PAD]`` to ``max_len`` (longer ones are truncated)."""
    if not sentences:
        raise ValueError("no sentences to encode (is the corpus split empty?)")
    enc = tokenizer(list(sentences), max_length=max_len, truncation=True, padding="max_length")
    ids = torch.tensor(enc["input_ids"], dtype=torch.int64)
    words = torch.tensor([len(s.split()) for s in sentences], dtype=torch.int64)
    full_lengths = [len(x) for x in tokenizer(list(sentences))["input_ids"]]
    whole = torch.tensor([n <= max_len for n in full_lengths], dtype=torch.bool)
    return EncodedSplit(ids=ids, words=words, whole=whole)


def encode_cached(tokenizer: Any, sentences: Sequence[str], max_len: int, cache: str | Path | None = None) -> EncodedSplit:
    """:func:`encode` through ``datasets.map`` (batched), cached as Arrow in ``cache`` (default
    ``<cache>/tokenized``) under a key of the tokenizer's vocabulary, ``max_len`` and the
    sentences: a second run (or another process of a multi-process run) reads the cache."""
    import datasets

    from .tokenizer import vocab_fingerprint

    if not sentences:
        raise ValueError("no sentences to encode (is the corpus split empty?)")
    key = hashlib.sha256()
    key.update(f"{vocab_fingerprint(tokenizer)}|{type(tokenizer).__name__}|{max_len}|".encode())
    for sentence in sentences:
        key.update(sentence.encode("utf-8") + b"\n")
    root = Path(cache) if cache is not None else cache_dir() / "tokenized"
    root.mkdir(parents=True, exist_ok=True)
    file = root / f"{key.hexdigest()[:32]}.arrow"

    def tokenize(batch: dict[str, list[str]]) -> dict[str, list[Any]]:
        texts = batch["text"]
        enc = tokenizer(texts, max_length=max_len, truncation=True, padding="max_length")
        full = tokenizer(texts)["input_ids"]
        return {"input_ids": enc["input_ids"], "words": [len(t.split()) for t in texts],
                "whole": [len(ids) <= max_len for ids in full]}

    data = datasets.Dataset.from_dict({"text": list(sentences)})
    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        done = data.map(tokenize, batched=True, batch_size=1000, remove_columns=["text"], cache_file_name=str(file),
                        load_from_cache_file=True)
    finally:
        if was:
            datasets.enable_progress_bars()
    cols = done.with_format("torch")[:]
    return EncodedSplit(ids=cols["input_ids"].to(torch.int64), words=cols["words"].to(torch.int64),
                        whole=cols["whole"].to(torch.bool))


def token_counts(ids: torch.Tensor, vocab_size: int, pad_id: int, *, add_special_tokens: bool = True) -> torch.Tensor:
    """``[V]`` int64 token counts of a split (padding not counted, so ``[PAD]`` gets count 0).

    ``ids``: ``[N, L]`` rows ``[CLS] x [SEP] [PAD]...`` as :func:`encode` makes them.
    ``add_special_tokens=True`` (the default, what every checkpoint so far stores): every
    non-padding token, ``[CLS]`` and ``[SEP]`` included. ``False``: the authors' counts
    (``word_freq.py`` over ids encoded with ``add_special_tokens=False``): only the sentences'
    own tokens ``x``, so ``[CLS]`` and ``[SEP]`` get count 0. This matters for the spindle's
    code-form information ``log(count+1) / max log(count+1)``: ``[CLS]`` / ``[SEP]`` occur once
    per sentence and can be the maximum that every token is divided by.
    """
    if not add_special_tokens:
        ids = _sentence_tokens_only(ids, pad_id)
    flat = ids.reshape(-1)
    counts = torch.bincount(flat[flat != pad_id], minlength=vocab_size)
    if counts.numel() != vocab_size:
        raise ValueError(f"token ids exceed the vocabulary size {vocab_size}")
    return counts.to(torch.int64)


def _sentence_tokens_only(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``ids`` with each row's first token (``[CLS]``) and last non-padding token (``[SEP]``, kept
    at the end of truncated rows too) replaced by ``pad_id``."""
    if ids.dim() != 2:
        raise ValueError(f"ids must be [N, L] rows [CLS] x [SEP] [PAD]..., got shape {tuple(ids.shape)}")
    real = ids != pad_id
    out = ids.clone()
    rows = torch.nonzero(real.any(1)).flatten()
    last = ids.shape[1] - 1 - torch.flip(real, dims=[1]).to(torch.int64).argmax(1)
    out[rows, 0] = pad_id
    out[rows, last[rows]] = pad_id
    return out
