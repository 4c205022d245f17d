"""A restored copy promoted to primary (restore --as-new-primary): the disaster-recovery path.

Its data directory is the restored copy's, moved from the restore target to PITR_HOME/servers/NAME/primary/
(so the next restore of any server never empties it), and pitrsite runs it as a local process with pg_ctl
whichever driver runs the demo fleet. pitrsite reaches it the way it reached the copy: through the copy's
private 0700 socket directory and the trust lines written ahead of the original's pg_hba.conf, as the
original's superuser, so no password of the original is needed (a new machine knows none). Everything
else is an external server's: capture through its own slot into its own archive, backups, its own
restore target, its own storage prefix. No standby: a standby is `server add` of a clone the user makes,
or a restore of this server promoted again.
"""
from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from fleet import pg, servers
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

    def restored(self, role: str) -> bool:
        return role in ("primary", "restore_target")  # both hold a restored copy: isolated, own socket

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
        return [f"{self.server.name} primary running on {settings.PITR_HOST}:{self.layout.port('primary')}",
                *super().up()]

    def down(self) -> list[str]:
        done = super().down()
        if self.state("primary") != "stopped":
            self.stop("primary")
            done.append(f"{self.server.name} primary stopped")
        return done

    def _check_port_free(self, role: str) -> None:
        port = self.layout.port(role)
        if role == "primary" and procs.port_in_use(settings.PITR_HOST, port):
            raise FleetError(f"port {port} for the primary {self.server.name} is already in use by another process")
        super()._check_port_free(role)


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
