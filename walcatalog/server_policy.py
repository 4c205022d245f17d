"""A server's own backup compression and retention, else the settings': the one place they are resolved.

Server.compression, retention_keep_backups and retention_days are blank (None) to follow the installation's
default (DEFAULT_COMPRESSION, PITR_RETENTION_KEEP_BACKUPS, PITR_RETENTION_DAYS); a value set on the server,
even 0, is that server's own.
"""
from __future__ import annotations

from django.conf import settings

from fleet import servers
from fleet.models import Server
from walcatalog.models import DEFAULT_COMPRESSION


def compression(server: Server | None = None) -> str:
    return (server or servers.current()).compression or DEFAULT_COMPRESSION


def retention(server: Server | None = None) -> tuple[int, float]:
    """(backups to keep, days of recovery window)."""
    server = server or servers.current()
    keep = server.retention_keep_backups
    days = server.retention_days
    return (settings.PITR_RETENTION_KEEP_BACKUPS if keep is None else keep,
            settings.PITR_RETENTION_DAYS if days is None else days)
