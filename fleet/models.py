"""Protected PostgreSQL servers: the demo fleet pitrsite runs itself, and servers reached by connection.

A managed server's connection, paths and ports come from the settings (PITR_PRIMARY_PORT, PITR_WAL_ARCHIVE,
...), so the demo fleet keeps today's layout; an external one stores its own. Passwords are never stored:
they come from the libpq password file named here, or from the environment (PGPASSFILE, PGPASSWORD).
"""
from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class ServerKind(models.TextChoices):
    MANAGED = "managed"
    EXTERNAL = "external"


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
    compression = models.CharField(max_length=8, blank=True, help_text="blank: the default")
    retention_keep_backups = models.PositiveIntegerField(null=True, blank=True, help_text="blank: the setting")
    retention_days = models.FloatField(null=True, blank=True, help_text="blank: the setting")
    # The cluster its WAL comes from, read from the first WAL indexed (or from storage by rebuild_catalog):
    # WAL with another system identifier is refused, and storage keys carry both (walcatalog.cluster).
    system_identifier = models.CharField(max_length=20, blank=True)
    pg_major = models.PositiveSmallIntegerField(null=True, blank=True)
    queue = models.CharField(max_length=100, default=DEFAULT_QUEUE,
                             help_text="Celery queue of the host holding its archive and restore target")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def managed(self) -> bool:
        return self.kind == ServerKind.MANAGED
