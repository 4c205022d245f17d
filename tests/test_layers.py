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


# The one process starter: pitrsite/runner.py (the supervisor uses it too; it imports nothing of Django).
# pitrsite/client.py may import nothing of the project: its one exec replaces itself with manage.py.
STARTERS = {"pitrsite/runner.py", "pitrsite/client.py"}
START_CALLS = {"Popen", "run", "call", "check_call", "check_output", "system", "execv", "execvp", "spawnv"}


def process_starts(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id in ("subprocess", "os") \
                and node.func.attr in START_CALLS:
            lines.append(node.lineno)
        if isinstance(node, ast.keyword) and node.arg == "preexec_fn":
            lines.append(node.value.lineno)
    return lines


def test_processes_start_in_one_place():
    found = [f"{path.relative_to(PROJECT)}:{line}"
             for package in LAYERS for path in sorted((PROJECT / package).rglob("*.py"))
             if str(path.relative_to(PROJECT)) not in STARTERS for line in process_starts(path)]
    assert found == []


def test_the_check_sees_a_process_start(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import subprocess\ndef f():\n    subprocess.run(['true'])\n"
                      "    subprocess.Popen(['true'], preexec_fn=f)\n")
    assert process_starts(module) == [3, 4, 4]


def test_the_client_imports_the_standard_library_only():
    """scripts/pitr restore|backup runs pitrsite/client.py with `/usr/bin/python3 -I -S`: no virtualenv, no project."""
    import sys

    names = {name for _, name in imported_packages(PROJECT / "pitrsite" / "client.py")}
    assert names and names - {"__future__"} <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)


def test_the_client_spells_the_settings_it_reads_as_settings_do():
    from django.conf import settings

    from pitrsite import apitoken, client

    assert client.HOST == settings.PITR_HOST
    env = {"PITR_HOME": str(settings.PITR_HOME), "PITR_WEB_PORT": str(settings.PITR_WEB_PORT)}
    assert client.port(env) == settings.PITR_WEB_PORT
    assert Path(client.home(env), *client.TOKEN_FILE) == apitoken.path()
