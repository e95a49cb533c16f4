"""The import rules of docs/architecture.md hold: every import of every module is one its package's row
of the table allows, no modules import each other in a circle, and `rewards/` and `rollout/` stand alone."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("cispo", "rollout", "rewards")
ARCHITECTURE = ROOT / "docs" / "architecture.md"
ROW = re.compile(r"^\| `(?P<package>[\w.]+)` \|[^|]*\| (?P<allowed>[^|]*) \|$")


def imported_modules(path: Path) -> set[str]:
    """Every absolute import of the file, function-local ones included."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def our_modules() -> dict[str, Path]:
    return {module_name(p): p for package in OURS for p in sorted((ROOT / package).rglob("*.py"))}


def import_table() -> dict[str, list[str]]:
    """package -> what it may import (of ours), read from the architecture document's table."""
    table = {}
    for line in ARCHITECTURE.read_text().splitlines():
        m = ROW.match(line.strip())
        if m:
            table[m["package"]] = re.findall(r"`([\w.]+)`", m["allowed"])
    return table


def package_of(module: str, table: dict[str, list[str]]) -> str:
    """The most specific row of the table the module belongs to."""
    candidates = [p for p in table if module == p or module.startswith(p + ".")]
    assert candidates, f"{module}: no row of the import table in docs/architecture.md covers it"
    return max(candidates, key=len)


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_table_covers_every_package():
    table = import_table()
    assert {"rewards", "rollout", "cispo", "cispo.driver", "cispo.config", "cispo.cli"} <= set(table)
    packages = {module_name(p.parent) for p in (ROOT / "cispo").glob("*/__init__.py")}
    assert packages <= set(table), sorted(packages - set(table))


def test_every_import_is_one_the_table_allows():
    table = import_table()
    offenders = []
    for module, path in our_modules().items():
        own = package_of(module, table)
        for target in imported_modules(path):
            if target.split(".")[0] not in OURS or within(target, own):
                continue
            if own == "cispo" and target == "cispo":
                continue
            if not any(within(target, allowed) for allowed in table[own]):
                offenders.append(f"{module} imports {target} ({own} may import: {table[own] or 'none of ours'})")
    assert not offenders, "\n".join(offenders)


def test_the_table_forbids_what_it_should():
    """The checker is not vacuous: the standalone packages may import nothing of ours, the trainer
    only rollout's wire modules, and the config nothing above it."""
    table = import_table()
    assert table["rewards"] == table["rollout"] == table["cispo.algorithms"] == []
    assert not any(within("rollout.group", a) or within("rollout.engine", a) for a in table["cispo.trainer"])
    assert not any(within(a, "cispo.driver") or within(a, "cispo.trainer") for a in table["cispo.config"])


def test_no_modules_import_each_other_in_a_circle():
    modules = our_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for target in imported_modules(path):
            # `from a.b import c` may name a module a.b.c or a name in a.b: take the longest module that exists.
            hit = max((m for m in modules if within(target, m)), key=len, default=None)
            if hit is not None and hit != module and not module.startswith(hit + "."):
                graph[module].add(hit)
    circles = strongly_connected(graph)
    assert not circles, circles


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: every set of two or more nodes that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_circle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


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
