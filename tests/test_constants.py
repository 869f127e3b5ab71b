"""Constants shared by the Python and C++ sides: each has one home per language, and they agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dbert_kernels import random as rnd
from dbert_kernels.schedules import SPINDLE_CODE_CLIP

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def _cpp_constant(file: str, name: str) -> str:
    found = re.findall(rf"constexpr\s+\w+\s+{name}\s*=\s*([^;]+);", (CSRC / file).read_text())
    assert len(found) == 1, f"{name} must be defined exactly once in csrc/{file}"
    return found[0].strip()


def _number(text: str) -> float:
    return float(int(text.rstrip("uU"), 0)) if text.lower().startswith("0x") else float(text.rstrip("fFuU"))


def test_spindle_clip_agrees():
    assert _number(_cpp_constant("ops.cpp", "kSpindleCodeClip")) == pytest.approx(SPINDLE_CODE_CLIP, abs=0)
    assert not re.search(r"\b0\.999f?\b", (CSRC / "ops.cpp").read_text().replace("= 0.999f;", ""))


@pytest.mark.parametrize("cpp, py", [
    ("kStreamMask", rnd.STREAM_MASK), ("kStreamSample", rnd.STREAM_SAMPLE), ("kStreamUnmask", rnd.STREAM_UNMASK),
    ("kStreamConfidence", rnd.STREAM_CONFIDENCE), ("kRoundA", rnd._ROUND_A), ("kRoundB", rnd._ROUND_B),
    ("kKeyA", rnd._KEY_A), ("kKeyB", rnd._KEY_B), ("kRounds", rnd._N_ROUNDS),
    ("kExpSeriesCutoff", rnd.EXP_SERIES_CUTOFF), ("kOneMinusUlp", rnd.ONE_MINUS_ULP),
])
def test_philox_constants_agree(cpp, py):
    assert _number(_cpp_constant("philox.h", cpp)) == float(py)


def test_no_dead_block_philox_in_the_header():
    assert "philox_block" not in (CSRC / "philox.h").read_text()
