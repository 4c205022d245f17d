"""Thin, root-safe wrappers around the PostgreSQL binaries and connections.

PostgreSQL refuses to run as root, so when we are root every server-side
command runs as the server OS user (settings.PITR_PG_OS_USER) through
pitrsite.runner (the one process starter), never through a shell.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Sequence

import psycopg
from django.conf import settings

from pitrsite import home, runner
from pitrsite.errors import FleetError, first_line
from pitrsite.runner import ToolFailed, server_account  # noqa: F401  (re-exported: fleet's callers use pg.*)


def bindir() -> Path:
    directory = Path(settings.PITR_PG_BINDIR) if settings.PITR_PG_BINDIR else None
    if directory is None or not (directory / "initdb").exists():
        where = f" in {directory}" if directory else ""
        raise FleetError(
            f"PostgreSQL server binaries not found{where}: install them (apt-get install postgresql) "
            "or set PITR_PG_BINDIR to the directory holding initdb"
        )
    return directory


def tool(name: str) -> str:
    path = bindir() / name
    if not path.exists():
        raise FleetError(f"{name} not found in {path.parent}: "
                         f"install the PostgreSQL server package or set PITR_PG_BINDIR")
    return str(path)


def give_to_server(*paths: Path) -> None:
    """Create directories (mode 0700 for data) and hand them to the server account."""
    account = server_account()
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        if account is not None:
            os.chown(path, account.pw_uid, account.pw_gid)


def run(argv: Sequence[str], *, step: str, as_server: bool = True, timeout: float | None = 600,
        env: dict | None = None, cwd: Path | None = None, check: bool = True,
        owner: str | None = None, on_line=None) -> subprocess.CompletedProcess:
    """pitrsite.runner.run, as the server account by default (the PostgreSQL tools' usual case)."""
    return runner.run(argv, step=step, as_server=as_server, timeout=timeout, env=env, cwd=cwd or "/",
                      check=check, owner=owner, on_line=on_line)


def passfile() -> Path:
    return home.secrets_dir("pgpass")


def password(user: str) -> str:
    """The generated password of a fleet role, read from the pgpass file fleet up writes."""
    try:
        for line in passfile().read_text().splitlines():
            parts = line.split(":")
            if len(parts) == 5 and parts[3] == user:
                return parts[4]
    except FileNotFoundError:
        pass
    raise FleetError(f"no password for role {user!r} in {passfile()}: run `python manage.py fleet up` first")


def libpq_env() -> dict:
    """Environment for client tools (pg_basebackup, pg_receivewal, psql) run by us."""
    return {"PGPASSFILE": str(passfile()), "PGCONNECT_TIMEOUT": "10", "TZ": "UTC"}


def connect(port: int, *, user: str | None = None, dbname: str | None = None,
            autocommit: bool = True, timeout: int = 5, **kwargs) -> psycopg.Connection:
    """A connection to one of our servers on loopback."""
    user = user or settings.PITR_PG_SUPERUSER
    try:
        return psycopg.connect(host=settings.PITR_HOST, port=port, user=user, password=password(user),
                               dbname=dbname or settings.PITR_DBNAME, autocommit=autocommit,
                               connect_timeout=timeout, **kwargs)
    except psycopg.OperationalError as exc:
        raise FleetError(f"cannot connect to PostgreSQL on {settings.PITR_HOST}:{port} "
                         f"({first_line(exc)})") from None


def fetch_row(cursor: psycopg.Cursor[Any]) -> Any:
    """The cursor's next row, for queries that always return one (an aggregate, a function call)."""
    row = cursor.fetchone()
    assert row is not None
    return row


def ensure_slot(conn: psycopg.Connection, slot: str) -> str:
    """A physical replication slot, created when missing (immediately_reserve: it holds WAL from now on,
    even before its first client), reused when inactive. Capture's slot goes through fleet.capture.ensure_slot."""
    row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", [slot]).fetchone()
    if row is None:
        conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", [slot])
        return f"slot {slot} created"
    return f"slot {slot} " + ("in use" if row[0] else "reused")
