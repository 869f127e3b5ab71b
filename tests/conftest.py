"""Shared pytest set-up.

Without a CUDA GPU, Triton kernels run under the interpreter: TRITON_INTERPRET must be set before
triton decorates any kernel, so it is set here, before any test module imports dbert_kernels.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def decoding_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny DiffusionBERT trained for 3 steps on the test corpus (16 tokens): for the CLI's
    decoding tests."""
    from dbert_model.cli import main

    from .model_fixtures import CORPUS, VOCAB

    out = tmp_path_factory.mktemp("decoding") / "run"
    args = ["train", "--out", str(out), "--data", str(CORPUS), "--tokenizer", str(VOCAB), "--init", "tiny",
            "--max-len", "16", "--batch-size", "16", "--steps", "3", "--eval-every", "3", "--eval-sentences", "8",
            "--log-every", "3", "--lr", "3e-3", "--warmup", "1", "--no-progress"]
    assert main(args) == 0
    return str(out)
