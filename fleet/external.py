"""The external driver: a server pitrsite reaches only by connection, never starts, stops or pauses.

What is ours lives under PITR_HOME/servers/NAME (fleet/layout.py): its capturer (pg_receivewal --slot under
fleet.supervise, as for the demo fleet) and its restore target, a local server on the restore port.
"""
from __future__ import annotations

from typing import Any

import psycopg
from django.conf import settings

from fleet import capture, pg, servers
from fleet.layout import Layout
from fleet.local import LocalDriver
from fleet.models import Server, ServerKind
from pitrsite import procs, runner
from pitrsite.dbcheck import unless_unmigrated
from pitrsite.errors import FleetError, PitrError, first_line

ROLES = ("primary", "capturer", "restore_target")


# Deleted in this order by remove_server(forget=True): what points at a row goes before it.
FORGET_ORDER = ("chaosrun", "restorejob", "storagecopy", "restorepoint", "walsegment", "basebackup", "timeline")


def remove_server(server: Server, forget: bool = False) -> str:
    """Stop what pitrsite runs of it and forget it (`server remove`, the admin); refused while it holds
    backups unless `forget`, which drops its catalog rows, and refused while it is a promoted copy whose
    primary runs (applications may write to it: stopping it is `fleet down`'s, on purpose). No file is
    deleted, nor its slot."""
    from fleet.driver import get_driver  # the driver module picks this one: imported late

    if server.managed:
        raise FleetError(f"{server.name} is the demo fleet pitrsite runs: stop it with `fleet down`")
    driver = get_driver(server)  # a promoted copy's also runs its primary and standby
    if server.kind == ServerKind.PROMOTED and driver.state("primary") != "stopped":
        raise FleetError(f"{server.name} is a primary pitrsite runs (port {driver.layout.port('primary')}), and it is "
                         f"running: stop it first with `python manage.py fleet down --server {server.name}`")
    related = {rel.related_model._meta.model_name: rel.related_model for rel in Server._meta.related_objects}
    held = related["basebackup"]._base_manager.filter(server=server).count()
    if held and not forget:
        raise FleetError(f"{server.name} holds {held} backup(s): remove it with --forget to drop its catalog "
                         "(no file is deleted)")
    with servers.using(server):
        driver.down()
    for model in FORGET_ORDER:
        if model in related:
            related[model]._base_manager.filter(server=server).delete()
    server.delete()
    return (f"server {server.name} removed; its files stay under PITR_HOME/servers/{server.name} and its slot "
            f"{server.slot_name} on the server (drop it there once nothing needs it)")


def each_on_this_host(action: str) -> tuple[list[str], list[str]]:
    """`up` or `down` of every external server on this host's queues (servers.on_this_host): what was done,
    and one `NAME: why` per server that failed (the others go on)."""
    from fleet.driver import get_driver  # the driver module picks this one: imported late

    here: list[Server] = unless_unmigrated(servers.on_this_host, [])  # a fresh home: no server to start
    lines, failed = [], []
    for server in here:
        if action == "up" and server.retired_at is not None:
            lines.append(retired_line(server))
            continue
        try:
            with servers.using(server):
                lines += getattr(get_driver(server), action)()  # external or promoted
        except PitrError as exc:
            failed.append(f"{server.name}: {exc}")
    return lines, failed


def retired_line(server: Server) -> str:
    heir = f" (successor {server.successor.name})" if server.successor else ""
    return f"{server.name} is retired{heir}: nothing of it started; its history stays restorable"


class ExternalDriver(LocalDriver):
    name = "external"
    roles: tuple[str, ...] = ROLES

    def __init__(self, server: Server):
        self.server = server
        self.c = servers.conn(server)
        super().__init__(Layout.of(server))

    @property
    def slot(self) -> str:
        return self.c.slot

    def connect(self, role: str = "primary", *, dbname: str | None = None, timeout: int = 5,
                **kwargs) -> psycopg.Connection:
        if role == "primary":
            host, port = self.c.host, self.c.port
            secret: dict[str, Any] = {"passfile": self.c.passfile} if self.c.passfile else {}
        else:  # the restore target: the original's roles and passwords, on our loopback port
            host, port = settings.PITR_HOST, self.layout.port(role)
            secret = {"password": servers.password(self.c, self.c.user) or ""}
        try:
            return psycopg.connect(host=host, port=port, user=self.c.user, dbname=dbname or self.c.dbname,
                                   connect_timeout=timeout, autocommit=kwargs.pop("autocommit", True),
                                   **secret, **kwargs)
        except psycopg.OperationalError as exc:
            raise FleetError(f"cannot connect to {self.server.name} ({role}) on {host}:{port} "
                             f"({first_line(exc)})") from None

    # --- the whole server: only what is ours ------------------------------------------------------
    def up(self) -> list[str]:
        self._check_home()
        with self.connect(dbname="postgres") as conn:
            slot_line = capture.ensure_slot(conn, self.slot, self.layout.archive)
        return [slot_line, self._ensure_capturer(), self._ensure_restore_target()]

    def down(self) -> list[str]:
        done = []
        for role in ("capturer", "restore_target"):
            if self.state(role) != "stopped":
                self.stop(role)
                done.append(f"{self.server.name} {role} stopped")
        return done

    def state(self, role: str) -> str:
        if role == "primary":
            try:
                with self.connect(dbname="postgres", timeout=3):
                    return "running"
            except FleetError:
                return "unreachable"
        return super().state(role)

    def pid(self, role: str) -> int | None:
        return None if role == "primary" else super().pid(role)

    def _not_ours(self, role: str, what: str) -> None:
        if role not in ("capturer", "restore_target"):
            raise FleetError(f"{self.server.name} is an external server: pitrsite does not {what} its {role}")

    def start(self, role: str, wait: bool = True) -> None:
        self._not_ours(role, "start")
        super().start(role, wait)

    def stop(self, role: str, mode: str = "fast") -> None:
        self._not_ours(role, "stop")
        super().stop(role, mode)

    def pause(self, role: str) -> None:
        self._not_ours(role, "pause")
        super().pause(role)

    def kill(self, role: str) -> None:
        self._not_ours(role, "kill")
        super().kill(role)

    def _check_home(self) -> None:
        pg.give_to_server(self.layout.home)
        super()._check_home()

    def _ensure_capturer(self) -> str:
        if procs.alive(procs.read_pid(self.layout.run / "capturer.supervisor.pid")):
            return f"{self.server.name} capturer already running"
        pg.give_to_server(self.layout.archive)
        argv = [pg.tool("pg_receivewal"), "-h", self.c.host, "-p", str(self.c.port), "-U", self.c.replication_user,
                "--no-password", "-D", str(self.layout.archive), f"--slot={self.slot}", "--synchronous", "--verbose"]
        account = pg.server_account()
        runner.start_supervised("capturer", argv, self.layout.run, self.layout.logfile("capturer"),
                               user=account.pw_name if account else None, env=servers.libpq_env(self.c),
                               wal_archive=self.layout.archive)
        if not procs.alive(self.pid("capturer")):
            raise FleetError(f"{self.server.name} capturer did not start: see {self.layout.logfile('capturer')}")
        return f"{self.server.name} capturer streaming into {self.layout.archive} through slot {self.slot}"

    def _ensure_restore_target(self) -> str:
        return f"{self.server.name} " + super()._ensure_restore_target()

    def _check_port_free(self, role: str) -> None:
        port = self.layout.port(role)
        if procs.port_in_use(settings.PITR_HOST, port):
            raise FleetError(f"port {port} for the restore target of {self.server.name} is already in use by "
                             f"another process: stop it or give the server another --restore-port")
