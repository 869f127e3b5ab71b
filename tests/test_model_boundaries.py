"""model/ uses dbert_kernels only through its public API; dbert_kernels never imports model/."""

from __future__ import annotations

import ast
from pathlib import Path

import dbert_kernels

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def test_model_uses_only_the_public_api_of_dbert_kernels() -> None:
    files = sorted((ROOT / "model").glob("*.py"))
    assert len(files) > 5
    for path in files:
        for module, names in _imports(path):
            if module.startswith("dbert_kernels"):
                assert module == "dbert_kernels", f"{path.name} imports {module} (use the public API)"
                assert set(names) <= set(dbert_kernels.__all__), f"{path.name}: {names}"


def test_dbert_kernels_does_not_import_model() -> None:
    for path in sorted((ROOT / "dbert_kernels").rglob("*.py")):
        assert not any(m.startswith("dbert_model") for m, _ in _imports(path)), path.name
