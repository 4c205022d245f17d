"""Where each role of the fleet lives: one source of truth for its paths and ports (names from pitrsite.home)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from pitrsite import home
from pitrsite.errors import FleetError

SERVER_ROLES = ("primary", "standby", "restore_target")
ROLES = ("primary", "standby", "capturer", "restore_target")


def check_role(role: str, allowed: tuple[str, ...] = ROLES) -> str:
    if role not in allowed:
        raise FleetError(f"unknown role {role!r}: choose one of {', '.join(allowed)}")
    return role


@dataclass(frozen=True)
class Layout:
    """The demo (managed) server keeps the paths of the settings; an external server NAME gets its own
    under PITR_HOME/servers/NAME (archive, backups, restore target, logs, run), so two servers' WAL,
    which carry the same file names, never meet."""

    home: Path
    archive: Path
    backups: Path
    ports: tuple[tuple[str, int], ...] = ()  # an external server's: primary (its own), restore_target, standby

    @classmethod
    def current(cls) -> "Layout":
        from fleet import servers  # servers imports the models, which need the apps loaded

        return cls.of(servers.chosen())  # none chosen: the demo server, whose paths need no query

    @classmethod
    def of(cls, server) -> "Layout":
        if server is None or server.managed:
            return cls(Path(settings.PITR_HOME), Path(settings.PITR_WAL_ARCHIVE), Path(settings.PITR_BACKUP_DIR))
        own = Path(settings.PITR_HOME) / home.SERVERS / server.name
        standby = (("standby", server.standby_port),) if server.standby_port else ()  # a promoted server's
        return cls(own, Path(server.archive_dir or own / home.WAL_ARCHIVE),
                   Path(server.backup_dir or own / home.BACKUPS),
                   (("primary", server.port or 0), ("restore_target", server.restore_port or 0), *standby))

    @property
    def logs(self) -> Path:
        return self.home / home.LOGS

    @property
    def run(self) -> Path:
        return self.home / home.RUN

    @property
    def secrets(self) -> Path:
        return self.home / home.SECRETS

    @property
    def staging(self) -> Path:
        return self.home / home.STAGING

    @property
    def redis(self) -> Path:
        return self.home / home.REDIS

    @property
    def pgadmin(self) -> Path:
        return self.home / home.PGADMIN

    def datadir(self, role: str) -> Path:
        return self.home / check_role(role, SERVER_ROLES) / "data"

    def logfile(self, role: str) -> Path:
        return self.logs / f"{check_role(role)}.log"

    def port(self, role: str) -> int:
        if self.ports:
            own = dict(self.ports)
            if role not in own:
                raise FleetError(f"this server has no {role} pitrsite runs")
            return own[role]
        return {
            "primary": settings.PITR_PRIMARY_PORT,
            "standby": settings.PITR_STANDBY_PORT,
            "restore_target": settings.PITR_RESTORE_PORT,
        }[check_role(role, SERVER_ROLES)]
