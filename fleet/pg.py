"""Thin, root-safe wrappers around the PostgreSQL binaries and connections.

PostgreSQL refuses to run as root, so when we are root every server-side
command runs as the server OS user (settings.PITR_PG_OS_USER) through
subprocess's user/group switch, never through a shell.
"""
from __future__ import annotations

import ctypes
import os
import pwd
import signal
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import psycopg
from django.conf import settings

from pitrsite.errors import FleetError, StepFailed

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


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


@lru_cache(maxsize=None)
def _server_account(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise FleetError(
            f"running as root but OS user {name!r} does not exist: create it (useradd --system {name}) "
            "or set PITR_PG_OS_USER"
        ) from None


def server_account() -> pwd.struct_passwd | None:
    """The account server-side commands run as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    return _server_account(settings.PITR_PG_OS_USER)


def _die_with_parent() -> None:
    # A tool we wait for must not outlive us: when a worker is SIGKILLed, its
    # pg_basebackup or tar goes too, instead of writing on into an abandoned job.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def as_server_kwargs() -> dict:
    """Popen keyword arguments: die with us, and drop to the server account when we are root."""
    account = server_account()
    if account is None:
        return {"preexec_fn": _die_with_parent}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": [], "preexec_fn": _die_with_parent,
            "env": {**os.environ, "HOME": account.pw_dir, "USER": account.pw_name, "LOGNAME": account.pw_name}}


def give_to_server(*paths: Path) -> None:
    """Create directories (mode 0700 for data) and hand them to the server account."""
    account = server_account()
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        if account is not None:
            os.chown(path, account.pw_uid, account.pw_gid)


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return "no output"


class ToolFailed(StepFailed, FleetError):
    """A server tool (initdb, pg_ctl, pg_basebackup, ...) exited non-zero, timed out or is missing."""


def run(argv: Sequence[str], *, step: str, as_server: bool = True, timeout: float | None = 600,
        env: dict | None = None, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command to completion; a failure raises FleetError('failure <step> (<first line>)').

    check=False returns a non-zero exit too, for tools whose exit status is a finding (pg_amcheck).
    """
    kwargs = as_server_kwargs() if as_server else {}
    if env:
        kwargs["env"] = {**kwargs.get("env", os.environ), **env}
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                                cwd=cwd or "/", **kwargs)
    except FileNotFoundError as exc:
        raise ToolFailed(step, f"{exc.filename} not found") from None
    except subprocess.TimeoutExpired:
        raise ToolFailed(step, f"timed out after {timeout:.0f} s") from None
    if check and result.returncode != 0:
        raise ToolFailed(step, f"{first_line(result.stderr or result.stdout)}")
    return result


def passfile() -> Path:
    return Path(settings.PITR_HOME) / "secrets" / "pgpass"


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
                         f"({first_line(str(exc))})") from None


def fetch_row(cursor: psycopg.Cursor[Any]) -> Any:
    """The cursor's next row, for queries that always return one (an aggregate, a function call)."""
    row = cursor.fetchone()
    assert row is not None
    return row
