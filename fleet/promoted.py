"""A restored copy promoted to primary (restore --as-new-primary): the disaster-recovery path.

Its data directory is the restored copy's, moved from the restore target to PITR_HOME/servers/NAME/primary/
(so the next restore of any server never empties it), and pitrsite runs it as a local process with pg_ctl
whichever driver runs the demo fleet. pitrsite reaches it the way it reached the copy: through the copy's
private 0700 socket directory and the trust lines written ahead of the original's pg_hba.conf, as the
original's superuser, so no password of the original is needed (a new machine knows none). Everything
else is an external server's: capture through its own slot into its own archive, backups, its own
restore target, its own storage prefix. A hot standby on request (`server standby NAME --port P`): cloned
with pg_basebackup -R through its own slot, as the demo fleet's standby is (fleet.provision.standby), and
started and stopped with the primary from then on.
"""
from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from fleet import pg, provision, servers
from fleet.driver import get_driver
from fleet.external import ExternalDriver
from fleet.layout import Layout
from fleet.local import LocalDriver
from fleet.models import Server, ServerKind
from pitrsite import procs
from pitrsite.errors import FleetError

ROLES = ("primary", "capturer", "restore_target")


class PromotedDriver(ExternalDriver):
    name = "promoted"
    roles: tuple[str, ...] = ROLES

    def __init__(self, server: Server):
        super().__init__(server)
        if server.standby_port:  # asked for with `server standby NAME --port P`
            self.roles = (*ROLES, "standby")

    def restored(self, role: str) -> bool:
        return role in ("primary", "restore_target")  # both hold a restored copy: isolated, own socket

    def socket_dir(self, role: str) -> Path:
        # The standby is a clone of the primary: its pg_hba.conf trusts the local socket too, so it gets a
        # private socket directory as well.
        return self.private_socket(role)

    @property
    def standby_slot(self) -> str:
        return f"{self.slot}_standby"

    def replication_source(self) -> tuple[list[str], dict]:
        return (["-h", self.c.host, "-p", str(self.c.port), "-U", self.c.replication_user, "--no-password"],
                servers.libpq_env(self.c))

    def _not_ours(self, role: str, what: str) -> None:
        return  # every role is ours

    def state(self, role: str) -> str:
        return LocalDriver.state(self, role)

    def pid(self, role: str) -> int | None:
        return LocalDriver.pid(self, role)

    def up(self) -> list[str]:
        self.server.refuse_if_retired("capture")
        self._check_home()
        self.start("primary")
        done = [f"{self.server.name} primary running on {settings.PITR_HOST}:{self.layout.port('primary')}",
                *super().up()]
        return done + ([self.standby_up()] if "standby" in self.roles else [])

    def standby_up(self) -> str:
        """Its standby's slot (reserving WAL from now), then the standby cloned through it and started."""
        with self.connect(dbname="postgres") as conn:
            slot = pg.ensure_slot(conn, self.standby_slot)
        return f"{self.server.name} {provision.standby(self)} ({slot})"

    def down(self) -> list[str]:
        done = super().down()
        for role in ("standby", "primary"):  # the standby first: it would only retry its primary
            if role in self.roles and self.state(role) != "stopped":
                self.stop(role)
                done.append(f"{self.server.name} {role} stopped")
        return done

    def _check_port_free(self, role: str) -> None:
        port = self.layout.port(role)
        if role in ("primary", "standby") and procs.port_in_use(settings.PITR_HOST, port):
            raise FleetError(f"port {port} for the {role} of {self.server.name} is already in use by another "
                             "process")
        super()._check_port_free(role)


def add_standby(server: Server, port: int) -> str:
    """`server standby NAME --port P`: a hot standby of a promoted server, streaming through its own slot; its
    port is remembered, so `fleet up`/`fleet down` start and stop it with the primary from then on."""
    if server.kind != ServerKind.PROMOTED:
        why = ("the demo fleet's standby is made by `fleet up`" if server.managed else
               "an external server's standbys are its own DBA's")
        raise FleetError(f"server {server.name} is not a promoted server (restore --as-new-primary): {why}")
    server.refuse_if_retired("standby")
    if server.standby_port and server.standby_port != port:
        raise FleetError(f"server {server.name} has a standby on port {server.standby_port} already")
    new = not server.standby_port
    if new:
        taken = {server.port: "its primary's", server.restore_port: "its restore target's"}
        if not 1024 <= port <= 65535:
            raise FleetError(f"--port {port} is not a port in 1024..65535")
        if port in taken:
            raise FleetError(f"--port {port} is {taken[port]} port: choose another")
        if procs.port_in_use(settings.PITR_HOST, port):
            raise FleetError(f"--port {port} is already in use by another process: choose a free port")
        server.standby_port = port
        server.save(update_fields=["standby_port"])
    driver = PromotedDriver(server)
    try:
        with servers.using(server):
            return driver.standby_up()
    except BaseException:
        if new:  # nothing half-made stays remembered: the same command can be run again
            server.standby_port = None
            server.save(update_fields=["standby_port"])
        raise


def new_primary_from_copy(old: Server, restore_layout: Layout, name: str, port: int, restore_port: int) -> Server:
    """Move the stopped, promoted restore target of `old` out of its role into a new server NAME, start it
    there, give it its capture slot and capturer, and retire `old` (its capturer stopped, its rows kept)."""
    old_parent = restore_layout.datadir("restore_target").parent
    c = servers.conn(old)
    server = Server(name=name, kind=ServerKind.PROMOTED, port=port, restore_port=restore_port,
                    user=c.user, replication_user=c.user, dbname=c.dbname, queue=old.queue,
                    slot_name=f"pitr_{name.replace('-', '_')}", system_identifier=old.system_identifier,
                    pg_major=old.pg_major)
    layout = Layout.of(server)
    new_parent = layout.datadir("primary").parent
    if new_parent.exists():
        raise FleetError(f"{new_parent} exists already: move it aside or choose another name than {name}")
    server.host = str(new_parent / "socket")  # libpq takes a directory as the host: the copy's private socket
    pg.give_to_server(layout.home)
    os.rename(old_parent, new_parent)  # one file system (both under PITR_HOME): instant, nothing copied
    _relink_tablespaces(layout.datadir("primary"), old_parent, new_parent)
    server.save()
    driver = PromotedDriver(server)
    try:
        with servers.using(server):
            driver.up()
    except BaseException:
        # Back where it was, so the message "the copy stays in the restore target" is true.
        with servers.using(server):
            driver.down()
        os.rename(new_parent, old_parent)
        _relink_tablespaces(restore_layout.datadir("restore_target"), new_parent, old_parent)
        server.delete()
        raise
    with servers.using(old):
        get_driver(old).stop("capturer")
    old.retired_at, old.successor = timezone.now(), server
    old.save(update_fields=["retired_at", "successor"])
    return server


def _relink_tablespaces(datadir: Path, old_parent: Path, new_parent: Path) -> None:
    """pg_tblspc links name absolute paths; the engine put the copy's tablespaces under the old parent."""
    links = datadir / "pg_tblspc"
    for link in links.iterdir() if links.is_dir() else ():
        target = Path(os.readlink(link))
        if target.is_relative_to(old_parent):
            link.unlink()
            link.symlink_to(new_parent / target.relative_to(old_parent))
