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
    home: Path
    archive: Path
    backups: Path

    @classmethod
    def current(cls) -> "Layout":
        return cls(Path(settings.PITR_HOME), Path(settings.PITR_WAL_ARCHIVE), Path(settings.PITR_BACKUP_DIR))

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

    def datadir(self, role: str) -> Path:
        return self.home / check_role(role, SERVER_ROLES) / "data"

    def logfile(self, role: str) -> Path:
        return self.logs / f"{check_role(role)}.log"

    @staticmethod
    def port(role: str) -> int:
        return {
            "primary": settings.PITR_PRIMARY_PORT,
            "standby": settings.PITR_STANDBY_PORT,
            "restore_target": settings.PITR_RESTORE_PORT,
        }[check_role(role, SERVER_ROLES)]
