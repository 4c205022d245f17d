"""Which server a piece of work is about, and how to reach it.

Every catalog row belongs to one server. The server being worked on is held in a context variable, set
by `using(server)` (commands after --server, tasks from the id they carry); without one it is the demo
server. Catalog managers (ScopedManager) only ever see the current server's rows, so code written for
one server cannot mix two; `all_servers` is the unscoped manager for the few places that list everything.
"""
from __future__ import annotations

import contextvars
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from django.conf import settings
from django.db import models

from fleet.models import DEFAULT_QUEUE, Server, ServerKind
from pitrsite.errors import ServerError
from pitrsite.locks import Lock

_current: contextvars.ContextVar[Server | None] = contextvars.ContextVar("pitr_server", default=None)
_demo_id: int | None = None


def demo_name() -> str:
    return settings.PITR_DEMO_SERVER


def demo() -> Server:
    """The managed server (the demo fleet), created on first need (a flushed test database has none)."""
    global _demo_id
    if _demo_id is not None:
        found = Server.objects.filter(pk=_demo_id).first()
        if found is not None:
            return found
    server, _ = Server.objects.get_or_create(name=demo_name(), defaults={"kind": ServerKind.MANAGED,
                                                                        "queue": DEFAULT_QUEUE})
    _demo_id = server.pk
    return server


def forget_cached() -> None:
    """After a flush (post_migrate) the demo server's row is new."""
    global _demo_id
    _demo_id = None


def chosen() -> Server | None:
    """The server set by using(), None for the default (the demo server)."""
    return _current.get()


def current() -> Server:
    return _current.get() or demo()


def current_id() -> int:
    server = _current.get()
    if server is not None:
        return server.pk
    if _demo_id is not None:
        return _demo_id
    return demo().pk


@contextmanager
def using(server: Server) -> Iterator[Server]:
    token = _current.set(server)
    try:
        yield server
    finally:
        _current.reset(token)


def resolve(name: str | None) -> Server:
    """The server a command names with --server; without one, the only server there is."""
    servers = list(Server.objects.order_by("name"))
    names = ", ".join(s.name for s in servers) or "none"
    if name:
        for server in servers:
            if server.name == name:
                return server
        raise ServerError(f"unknown server {name!r}: choose one of {names} (`python manage.py server list`)")
    if not servers:
        return demo()
    if len(servers) > 1:
        raise ServerError(f"{len(servers)} servers are configured: name one with --server ({names})")
    return servers[0]


class ScopedManager(models.Manager):
    """The catalog's default manager: the current server's rows only."""

    def get_queryset(self):
        server = _current.get()
        if server is None and _demo_id is None:  # no query to learn the id (a form's queryset at import)
            return super().get_queryset().filter(server__name=demo_name())
        return super().get_queryset().filter(server_id=server.pk if server is not None else _demo_id)


def server_field(related_name: str) -> models.ForeignKey:
    return models.ForeignKey(Server, on_delete=models.PROTECT, default=current_id, related_name=related_name)


# --- how to reach a server ----------------------------------------------------------------------
@dataclass(frozen=True)
class Conn:
    host: str
    port: int
    user: str
    replication_user: str
    dbname: str
    passfile: str  # "" for the environment's (PGPASSFILE, PGPASSWORD)
    slot: str


def conn(server: Server | None = None) -> Conn:
    server = server or current()
    if server.managed:
        from fleet import pg  # pg imports the settings only; servers sit beside it

        return Conn(settings.PITR_HOST, settings.PITR_PRIMARY_PORT, settings.PITR_PG_SUPERUSER,
                    settings.PITR_REPL_USER, settings.PITR_DBNAME, str(pg.passfile()), settings.PITR_CAPTURE_SLOT)
    # server add requires a port; an entry rebuilt from storage (restores only) has none
    return Conn(server.host, server.port or 0, server.user, server.replication_user or server.user,
                server.dbname or "postgres", server.passfile, server.slot_name or f"pitr_{server.name}")


def password(c: Conn, user: str) -> str | None:
    """The password libpq would use for user@host:port: from the passfile (wildcards allowed), else PGPASSWORD.

    Also used for the restore target, which inherits the original's roles and passwords with the backup
    but listens elsewhere, where the passfile has no line for it.
    """
    path = Path(c.passfile or os.environ.get("PGPASSFILE") or Path.home() / ".pgpass")
    try:
        lines = path.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = _pgpass_fields(line)
        if len(fields) != 5:
            continue
        host, port, db, role, secret = fields
        if host in ("*", c.host) and port in ("*", str(c.port)) and role in ("*", user) and db in ("*", c.dbname,
                                                                                                   "replication"):
            return secret
    return os.environ.get("PGPASSWORD")


def _pgpass_fields(line: str) -> list[str]:
    if not line or line.startswith("#"):
        return []
    fields: list[str] = []
    field, escaped = "", False
    for char in line:
        if escaped:
            field, escaped = field + char, False
        elif char == "\\":
            escaped = True
        elif char == ":" and len(fields) < 4:
            fields.append(field)
            field = ""
        else:
            field += char
    return [*fields, field]


def libpq_env(c: Conn) -> dict:
    """Environment for pg_basebackup / pg_receivewal against the server: its passfile, nothing printed."""
    env = {"PGCONNECT_TIMEOUT": "10", "TZ": "UTC"}
    if c.passfile:
        env["PGPASSFILE"] = c.passfile
    return env


def host_queues() -> list[str]:
    """The queues this host serves: PITR_WORKER_QUEUES, else Celery's default queue (a worker without -Q)."""
    return settings.PITR_WORKER_QUEUES.split(",") if settings.PITR_WORKER_QUEUES else [DEFAULT_QUEUE]


def on_this_host() -> list[Server]:
    """The external servers whose capturer and restore target live here: those on one of this host's queues."""
    return list(Server.objects.exclude(kind=ServerKind.MANAGED).filter(queue__in=host_queues()).order_by("name"))


def queue_of(server: Server | None = None) -> str:
    return (server or current()).queue or DEFAULT_QUEUE


def lock(base: Lock, server: Server | None = None) -> Lock:
    """One backup, restore, index pass ... at a time per server: the demo server keeps the lock's own name."""
    server = server or chosen()
    return base if server is None or server.managed else Lock(f"{base.name}-{server.name}", base.what)
