"""Protected PostgreSQL servers: the demo fleet pitrsite runs itself, and servers reached by connection.

A managed server's connection, paths and ports come from the settings (PITR_PRIMARY_PORT, PITR_WAL_ARCHIVE,
...), so the demo fleet keeps today's layout; an external one stores its own. Passwords are never stored:
they come from the libpq password file named here, or from the environment (PGPASSFILE, PGPASSWORD).
"""
from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class ServerKind(models.TextChoices):
    MANAGED = "managed"  # the demo fleet: paths and ports from the settings
    EXTERNAL = "external"  # reached by connection only
    # A restored copy promoted to primary (restore --as-new-primary): pitrsite runs its server on its own
    # data directory under PITR_HOME/servers/NAME and reaches it through the copy's private socket (host is
    # that directory), so capture, backups and storage work as for an external server, start and stop too.
    PROMOTED = "promoted"


class Compression(models.TextChoices):
    """A base backup's compression (pg_basebackup --compress): a server may set its own."""
    NONE = "none"
    GZIP = "gzip"
    LZ4 = "lz4"
    ZSTD = "zstd"


DEFAULT_QUEUE = "celery"  # Celery's own default queue: one worker with no -Q serves it


class Server(models.Model):
    name = models.SlugField(max_length=40, unique=True)
    kind = models.CharField(max_length=10, choices=ServerKind.choices, default=ServerKind.EXTERNAL)
    host = models.CharField(max_length=200, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1),
                                                                          MaxValueValidator(65535)])
    user = models.CharField(max_length=63, blank=True, help_text="a superuser (or pg_monitor + backup rights)")
    dbname = models.CharField(max_length=63, blank=True)
    replication_user = models.CharField(max_length=63, blank=True, help_text="blank: the same as user")
    passfile = models.CharField(max_length=500, blank=True, help_text="libpq password file covering both roles")
    slot_name = models.CharField(max_length=63, blank=True)
    archive_dir = models.CharField(max_length=500, blank=True, help_text="blank: under PITR_HOME/servers/NAME")
    backup_dir = models.CharField(max_length=500, blank=True, help_text="blank: under PITR_HOME/servers/NAME")
    storage_prefix = models.CharField(max_length=200, blank=True, help_text="blank: NAME/ (the demo server: none)")
    restore_port = models.PositiveIntegerField(null=True, blank=True)
    # A hot standby pitrsite runs beside a promoted server (`server standby NAME --port P`), streaming through
    # its own slot: its port, blank for none. The demo fleet's standby takes PITR_STANDBY_PORT instead.
    standby_port = models.PositiveIntegerField(null=True, blank=True, help_text="a promoted server's hot standby")
    compression = models.CharField(max_length=8, blank=True, choices=Compression.choices,
                                   help_text="blank: the default")
    retention_keep_backups = models.PositiveIntegerField(null=True, blank=True, help_text="blank: the setting")
    retention_days = models.FloatField(null=True, blank=True, help_text="blank: the setting")
    # The cluster its WAL comes from, read from the first WAL indexed (or from storage by rebuild_catalog):
    # WAL with another system identifier is refused, and storage keys carry both (walcatalog.cluster).
    system_identifier = models.CharField(max_length=20, blank=True)
    pg_major = models.PositiveSmallIntegerField(null=True, blank=True)
    queue = models.CharField(max_length=100, default=DEFAULT_QUEUE,
                             help_text="Celery queue of the host holding its archive and restore target")
    # Disaster recovery (restore --as-new-primary): the lost server's entry is not deleted but retired, because
    # its catalog is the history the new primary came from and stays restorable; a timestamp (not a flag)
    # says from when capture and backups are refused, and `successor` names the server that took over, so
    # the old entry points at the new one instead of a note in a name or a second table.
    retired_at = models.DateTimeField(null=True, blank=True,
                                      help_text="capture and backups refused from then on; restores still work")
    successor = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="predecessors", help_text="the server promoted in its place")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def managed(self) -> bool:
        return self.kind == ServerKind.MANAGED

    def refuse_if_retired(self, what: str) -> None:
        """Capture and backups of a retired server: one line naming its successor."""
        if self.retired_at is None:
            return
        from pitrsite.errors import FleetError

        heir = f"; its successor is {self.successor.name} (--server {self.successor.name})" if self.successor else ""
        raise FleetError(f"server {self.name} was retired at {self.retired_at:%Y-%m-%d %H:%M:%S} UTC: no {what} "
                         f"of it (its history stays restorable){heir}")
