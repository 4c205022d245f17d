"""Bad input gets a one-line error that names the fix, never a traceback; config files stay in sync.

Each case runs manage.py as a user would, in a subprocess with a full explicit
environment (pitrsite.settings, not the suite's tests.settings) and a fresh
data home, so nothing leaks in from the suite or from a developer's .env.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
import yaml

PROJECT = Path(__file__).resolve().parent.parent
ENV_READERS = {"envstr", "envbool", "envint", "envfloat", "envport", "envchoice", "get", "getenv"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def home() -> Path:
    # Directly under /tmp: the postgres OS user must reach its data directories when we are root,
    # and pytest's own tmp_path parents are private to root.
    base = Path(tempfile.mkdtemp(prefix="pitr-errors-"))
    base.chmod(0o755)
    (base / "home").mkdir(mode=0o755)
    yield base / "home"
    shutil.rmtree(base, ignore_errors=True)


def clean_env(home: Path, **extra: str) -> dict:
    """Only what a user's shell would have, plus our settings: no PITR_*, DATABASE_URL or CELERY_* of the suite."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "DJANGO_SETTINGS_MODULE": "pitrsite.settings",
        "PYTHONPATH": str(PROJECT),
        "PITR_ENV_FILE": str(home.parent / "no-such.env"),
        "PITR_HOME": str(home),
        "PITR_PRIMARY_PORT": str(free_port()),
        "PITR_STANDBY_PORT": str(free_port()),
        "PITR_RESTORE_PORT": str(free_port()),
        "PITR_REDIS_PORT": str(free_port()),
        "PITR_WEB_PORT": str(free_port()),
        "PITR_WAL_SEGSIZE_MB": "1",
    }
    env.update(extra)
    return env


def run_manage(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT / "manage.py"), *args], capture_output=True, text=True,
                          env=env, cwd=PROJECT, timeout=300, stdin=subprocess.DEVNULL)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The command failed with exactly one non-empty stderr line and no traceback; returns that line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, f"expected a failure, got exit 0:\n{result.stdout}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return lines[0]


def test_port_not_a_number(home):
    line = one_line_error(run_manage(clean_env(home, PITR_PRIMARY_PORT="abc"), "fleet", "status"))
    assert "PITR_PRIMARY_PORT" in line and "'abc'" in line and "not an integer" in line


def test_port_out_of_range(home):
    line = one_line_error(run_manage(clean_env(home, PITR_STANDBY_PORT="70000"), "fleet", "status"))
    assert "PITR_STANDBY_PORT=70000" in line and "1024..65535" in line


def test_home_unwritable(home):
    blocker = home / "a-file"
    blocker.write_text("not a directory")
    line = one_line_error(run_manage(clean_env(home, PITR_HOME=str(blocker / "home")), "fleet", "status"))
    assert str(blocker / "home") in line and "PITR_HOME" in line


def test_pg_binaries_missing(home, tmp_path):
    empty = tmp_path / "empty-bindir"
    empty.mkdir()
    line = one_line_error(run_manage(clean_env(home, PITR_PG_BINDIR=str(empty)), "fleet", "up"))
    assert "PostgreSQL server binaries not found" in line
    assert str(empty) in line and "apt-get install postgresql" in line and "PITR_PG_BINDIR" in line


def test_primary_port_in_use(home):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        result = run_manage(clean_env(home, PITR_PRIMARY_PORT=str(busy)), "fleet", "up")
    line = one_line_error(result)
    assert f"port {busy}" in line and "already in use" in line and "PITR_PRIMARY_PORT" in line


def test_unknown_role(home):
    line = one_line_error(run_manage(clean_env(home), "fleet", "pause", "nosuch"))
    assert "unknown role 'nosuch'" in line and "primary" in line and "capturer" in line


def test_redis_server_missing(home, tmp_path):
    # A PATH with python but no redis-server: `services up` must refuse before starting anything.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    line = one_line_error(run_manage(clean_env(home, PATH=str(bindir)), "services", "up"))
    assert "redis-server not found" in line and "apt-get install redis-server" in line
    assert not (home / "run" / "web.supervisor.pid").exists()


def test_web_port_in_use(home):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        result = run_manage(clean_env(home, PITR_WEB_PORT=str(busy)), "services", "up")
    line = one_line_error(result)
    assert f"port {busy}" in line and "already in use" in line and "PITR_WEB_PORT" in line
    assert not (home / "run" / "redis.supervisor.pid").exists(), "a busy port must leave nothing half-started"


# --- config files -----------------------------------------------------------------------------------

SETTING_NAME = re.compile(r"(PITR|DJANGO|CELERY)_[A-Z0-9_]+|DATABASE_URL")


def helper_modules(tree: ast.Module) -> list[Path]:
    """Project modules settings.py imports helpers from (walcatalog/storage.py reads PITR_STORAGE_*)."""
    paths = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module != "pitrsite.config":
            path = PROJECT / (node.module.replace(".", "/") + ".py")
            if path.exists():
                paths.append(path)
    return paths


def settings_env_names() -> set[str]:
    """Every environment variable settings.py reads at start-up, by name.

    In settings.py: the first argument of an env reader; in the project modules it calls into: every
    string constant that looks like one of our setting names.
    """
    tree = ast.parse((PROJECT / "pitrsite" / "settings.py").read_text())
    names = set()
    for path in helper_modules(tree):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SETTING_NAME.fullmatch(node.value):
                names.add(node.value)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ENV_READERS and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                and ast.unparse(node.value) == "os.environ":
            names.add(node.slice.value)
    return {n for n in names if re.fullmatch(r"[A-Z][A-Z0-9_]*", n)}


def test_env_example_lists_every_setting():
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (PROJECT / ".env.example").read_text(), re.M))
    read = settings_env_names()
    # The reader itself must find the obvious ones, or this test proves nothing.
    assert {"PITR_HOME", "PITR_PRIMARY_PORT", "DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SECRET_KEY"} <= read
    missing = sorted(read - documented)
    assert not missing, f"settings.py reads {missing} but .env.example does not list them (name, default, comment)"


def test_env_example_names_each_setting_once():
    names = re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", (PROJECT / ".env.example").read_text(), re.M)
    twice = sorted({name for name in names if names.count(name) > 1})
    assert not twice, f".env.example lists {twice} more than once"


def test_env_example_entries_have_a_comment():
    lines = (PROJECT / ".env.example").read_text().splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^#?\s*[A-Z][A-Z0-9_]*=", line):
            block = lines[:index]
            while block and re.match(r"^#?\s*[A-Z][A-Z0-9_]*=", block[-1]):
                block.pop()  # a group of related settings shares one comment
            assert block and block[-1].startswith("# "), f".env.example: {line!r} has no comment above it"


COMPOSE_TOP_LEVEL = {"version", "name", "services", "networks", "volumes", "secrets", "configs", "include"}


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.override.yml"])
def test_compose_files_are_valid(name):
    path = PROJECT / name
    assert path.exists(), f"{name} is missing"
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{name} must be a mapping"
    unknown = {key for key in data if key not in COMPOSE_TOP_LEVEL and not key.startswith("x-")}
    assert not unknown, f"{name}: unknown top-level keys {sorted(unknown)}"
    services = data.get("services")
    assert isinstance(services, dict), f"{name}: services must be a mapping"
    for service, spec in services.items():
        assert isinstance(spec, dict), f"{name}: service {service} must be a mapping"


def test_scripts_are_executable():
    for script in ("scripts/pitr", ".ci/run"):
        mode = (PROJECT / script).stat().st_mode
        assert mode & stat.S_IXUSR, f"{script} is not executable: chmod +x {script}"


# --- settings caught at load, before anything is touched ----------------------------------------------

@pytest.mark.parametrize("second", ["PITR_STANDBY_PORT", "PITR_RESTORE_PORT", "PITR_REDIS_PORT", "PITR_WEB_PORT"])
def test_two_of_our_ports_equal(home, second):
    port = str(free_port())
    line = one_line_error(run_manage(clean_env(home, PITR_PRIMARY_PORT=port, **{second: port}), "fleet", "status"))
    assert "PITR_PRIMARY_PORT" in line and second in line and port in line and "its own port" in line


@pytest.mark.parametrize("size", ["3", "24", "2048", "0"])
def test_wal_segment_size_not_a_power_of_two(home, size):
    line = one_line_error(run_manage(clean_env(home, PITR_WAL_SEGSIZE_MB=size), "fleet", "status"))
    assert f"PITR_WAL_SEGSIZE_MB={size}" in line and ("power of two" in line or "1..1024" in line)
    assert not (home / "primary").exists(), "a bad setting must stop before any server is created"


def test_unmigrated_home_says_run_migrate(home):
    line = one_line_error(run_manage(clean_env(home), "backup"))
    assert "python manage.py migrate" in line and "Traceback" not in line
    line = one_line_error(run_manage(clean_env(home), "backups"))
    assert "python manage.py migrate" in line


def test_database_url_keeps_its_query_options(tmp_path):
    from pitrsite.config import database_from_url

    config = database_from_url("postgres://u:p%40x@db.example:5433/pitr?sslmode=require&options=-c%20search_path%3Dx",
                               tmp_path)
    assert (config["NAME"], config["USER"], config["PASSWORD"], config["HOST"], config["PORT"]) == \
        ("pitr", "u", "p@x", "db.example", "5433")
    assert config["OPTIONS"] == {"sslmode": "require", "options": "-c search_path=x",
                                 "application_name": "pitrsite pytest"}
    named = database_from_url("postgres://u@h/pitr?application_name=mine", tmp_path)
    assert named["OPTIONS"]["application_name"] == "mine", "the URL's own name wins"
    relative = database_from_url("sqlite:///var/db.sqlite3", tmp_path)
    assert relative["NAME"] == str(tmp_path / "var/db.sqlite3") and relative["OPTIONS"]["timeout"] == 30
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL scheme 'mysql' is not supported"):
        database_from_url("mysql://u@h/db", tmp_path)


@pytest.mark.parametrize("argv, name", [
    (["/srv/pitrsite/manage.py", "restore", "--latest"], "pitrsite restore"),
    (["/srv/.venv/lib/python3.11/site-packages/celery/__main__.py", "-A", "pitrsite", "worker", "--beat"],
     "pitrsite worker"),
    (["/srv/.venv/bin/celery", "-A", "pitrsite", "beat"], "pitrsite beat"),
    (["/srv/.venv/bin/gunicorn", "pitrsite.wsgi"], "pitrsite gunicorn"),
])
def test_each_process_names_itself_to_postgresql(argv, name):
    from pitrsite.config import application_name

    assert application_name(argv) == name
