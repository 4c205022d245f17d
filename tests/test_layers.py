"""Imports point down the layers only: pitrsite <- fleet <- walcatalog <- restores <- chaos <- dashboard.

Read from the source with ast, so a lazy import inside a function counts as much as one at the top.
"""
from __future__ import annotations

import ast
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
LAYERS = ["pitrsite", "fleet", "walcatalog", "restores", "chaos", "dashboard"]  # bottom first


def imported_packages(path: Path) -> set[tuple[int, str]]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


def upward_imports() -> list[str]:
    wrong = []
    for rank, package in enumerate(LAYERS):
        above = set(LAYERS[rank + 1:])
        for path in sorted((PROJECT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue  # generated; Django names the apps they depend on
            for line, name in sorted(imported_packages(path)):
                if name in above:
                    wrong.append(f"{path.relative_to(PROJECT)}:{line} imports {name}")
    return wrong


def test_no_upward_import():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from dashboard import views\n")
    assert (2, "dashboard") in imported_packages(module)
