"""The data home's layout (PITR_HOME): the one place its directory names are spelled.

At the bottom layer so the job machinery, locks and periodic-task records can find their files;
fleet.layout adds the fleet's own places (data directories, logs per role, ports) on top.
"""
from __future__ import annotations

from pathlib import Path

from django.conf import settings

RUN = "run"  # pid files, locks, job children, periodic task records
SECRETS = "secrets"  # generated passwords, the pgpass file (mode 0700)
LOGS = "logs"
STAGING = "staging"  # scratch for restores, verification and rebuilds
CHAOS = "chaos"  # one directory per chaos run
WAL_ARCHIVE = "wal_archive"  # the default PITR_WAL_ARCHIVE (and an external server's, under its own home)
BACKUPS = "backups"  # the default PITR_BACKUP_DIR (likewise)
SERVERS = "servers"  # servers/NAME: an external server's own home (fleet/layout.py)
REDIS = "redis"  # the broker's working directory
PGADMIN = "pgadmin"  # pgAdmin's configuration and state


def home() -> Path:
    return Path(settings.PITR_HOME)


def run_dir(*parts: str) -> Path:
    return home().joinpath(RUN, *parts)


def secrets_dir(*parts: str) -> Path:
    return home().joinpath(SECRETS, *parts)


def chaos_dir(*parts: str) -> Path:
    return home().joinpath(CHAOS, *parts)


def staging_dir(*parts: str) -> Path:
    return home().joinpath(STAGING, *parts)
