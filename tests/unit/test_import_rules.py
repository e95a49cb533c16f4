"""`rewards/` and `rollout/` never import `cispo/`: they are usable on their own (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["rewards", "rollout"])
def test_standalone_packages_do_not_import_cispo(package):
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "cispo")
                 for p in sorted((ROOT / package).rglob("*.py"))}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, offenders


def test_the_algorithms_import_only_torch_and_themselves():
    allowed = {"torch", "cispo", "__future__", "collections", "dataclasses", "typing", "math"}
    for path in sorted((ROOT / "cispo" / "algorithms").glob("*.py")):
        outside = {m for m in imported_modules(path) if m.split(".")[0] not in allowed}
        assert not outside, (path.name, outside)
        assert all(m.startswith("cispo.algorithms") for m in imported_modules(path) if m.split(".")[0] == "cispo"), path
