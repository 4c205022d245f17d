"""The one fleet interface, and the choice of driver (settings.PITR_FLEET_DRIVER).

Everything above fleet/ (catalog, restores, chaos, dashboard) talks to a FleetDriver and never asks
which one runs: `local` (processes on this machine, fleet/local.py) or `docker` (containers through
the Docker SDK, fleet/docker.py). Both keep the servers' data under the same Layout, so the restore
engine's extraction and WAL staging are file operations on this host with either.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import psycopg
from django.conf import settings

from fleet.layout import Layout
from pitrsite.errors import FleetError


class FleetDriver(Protocol):
    name: str
    layout: Layout
    roles: tuple[str, ...]  # an external server has no standby or capturer pitrsite runs

    @property
    def slot(self) -> str:
        """The capture slot on the primary."""

    @property
    def standby_slot(self) -> str:
        """The standby's slot on the primary (a server with a standby pitrsite runs)."""

    def connect(self, role: str = "primary", *, dbname: str | None = None, timeout: int = 5,
                **kwargs) -> psycopg.Connection:
        """A connection to one of this server's nodes as the superuser."""

    def prepare_restore_target(self) -> None:
        """The restore target's directories, without any primary (a restore-only home)."""

    def connect_own(self, role: str, user: str, timeout: int = 5) -> psycopg.Connection:
        """pitrsite's own login to the restored copy (its private socket): no password of the original's."""

    def socket_dir(self, role: str) -> Path:
        """Where the node listens on a Unix socket (the restore target's: private, trusted by the copy)."""

    def up(self) -> list[str]:
        """Create and start every role, idempotently; returns what was done."""

    def down(self) -> list[str]:
        """Stop every role (the docker driver also removes its containers); returns what was done."""

    def state(self, role: str) -> str:
        """running, paused or stopped."""

    def pid(self, role: str) -> int | None:
        """The role's main process as this host sees it (a server's postmaster), None when stopped."""

    def details(self, role: str) -> dict:
        """Driver facts for status: the docker driver's container id, image, state and health."""

    def start(self, role: str, wait: bool = True) -> None: ...

    def stop(self, role: str, mode: str = "fast") -> None: ...

    def restart(self, role: str) -> None: ...

    def pause(self, role: str) -> None: ...

    def resume(self, role: str) -> None: ...

    def resume_later(self, role: str, seconds: float) -> None:
        """A detached safety net: resume the role after `seconds` even if the caller dies meanwhile."""

    def kill(self, role: str) -> None: ...

    def run_in(self, role: str, argv: list[str]) -> str:
        """Run a command where the node lives (as the server account); its output, or ToolFailed."""

    def put_file(self, role: str, relpath: str, content: str | bytes, mode: int = 0o600) -> Path: ...

    def write_node_conf(self, role: str, extra: dict[str, str] | None = None) -> None: ...

    def check_port_ours(self, role: str) -> None:
        """Before touching a role: its port is free, or held by this role's own server."""

    def check_action(self, action: str) -> None:
        """Refuse, in one line naming the driver that has it, a chaos action this driver does not do."""


# Chaos actions only one driver can do; every other action works on both.
DRIVER_ONLY_ACTIONS = {
    "primary_restart": "docker",  # `docker restart` of the primary's container: the server and its container
}


def refuse_foreign_action(driver_name: str, action: str) -> None:
    owner = DRIVER_ONLY_ACTIONS.get(action)
    if owner is not None and owner != driver_name:
        raise FleetError(f"chaos action {action} is an action of the {owner} driver; this fleet runs the "
                         f"{driver_name} driver (PITR_FLEET_DRIVER={owner} has it)")


def get_driver(server=None) -> FleetDriver:
    """The driver of a server (the current one by default): the demo fleet's is PITR_FLEET_DRIVER's (local
    processes or docker containers); an external server's reaches it by connection only; a promoted copy's
    runs it as a local process (fleet/promoted.py)."""
    from fleet import servers  # servers needs the app registry; drivers are imported before it is ready

    server = server or servers.chosen()
    if server is not None and server.kind == "promoted":  # ServerKind.PROMOTED (models need the registry)
        from fleet.promoted import PromotedDriver

        return PromotedDriver(server)
    if server is not None and not server.managed:
        from fleet.external import ExternalDriver

        return ExternalDriver(server)
    if settings.PITR_FLEET_DRIVER == "docker":
        from fleet.docker import DockerDriver

        return DockerDriver()
    from fleet.local import LocalDriver

    return LocalDriver()
