"""The README and the API page: their Python examples run as written, their links resolve, and the
README's set-up and test commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "docs" / "api.md", ROOT / "docs" / "backends.md", ROOT / "docs" / "results.md"]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


@pytest.mark.parametrize("path", [README, ROOT / "docs" / "api.md"], ids=lambda p: p.name)
def test_python_blocks_run(path: Path) -> None:
    blocks = _python_blocks(path)
    assert blocks, f"{path.name} has no python example"
    for block in blocks:
        exec(compile(block, str(path), "exec"), {"__name__": "readme"})


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (path.parent / target.split("#")[0]).exists():
            missing.append(target)
    assert not missing, f"{path.name} links to missing files: {missing}"


def test_setup_and_test_commands_are_the_ones_ci_runs() -> None:
    text, ci = README.read_text(), (ROOT / ".ci" / "run").read_text()
    for command in ("python -m pip install -r requirements/cpu.txt", "python -m pytest -q"):
        assert command in text and command in ci, command


def test_stock_requirements_match_the_tested_ones() -> None:
    """requirements/cpu-stock.txt: PyTorch's CPU index first, then exactly requirements/cpu.txt's pins."""

    def pins(name: str) -> list[str]:
        lines = (ROOT / "requirements" / name).read_text().splitlines()
        return [line for line in lines if line.strip() and not line.startswith(("#", "--"))]

    stock = (ROOT / "requirements" / "cpu-stock.txt").read_text().splitlines()
    assert stock[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert pins("cpu-stock.txt") == pins("cpu.txt")
    assert "requirements/cpu-stock.txt" in README.read_text()


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= 150
