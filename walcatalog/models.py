"""What pitrsite holds: timelines, WAL segments and base backups.

LSNs are stored as 64-bit integers (BigIntegerField is signed: fine below
8 EiB of WAL) and shown in PostgreSQL's X/Y form through walnames.
"""
from __future__ import annotations

from typing import ClassVar

from django.db import models

from fleet.models import Compression
from fleet.servers import ScopedManager, server_field, using
from pitrsite.jobs import Job, JobState
from walcatalog import walnames


class Timeline(models.Model):
    server = server_field("timelines")
    tli = models.PositiveIntegerField()
    parent_tli = models.PositiveIntegerField(null=True, blank=True)
    switch_lsn = models.BigIntegerField(null=True, blank=True, help_text="where this timeline branched off its parent")
    history = models.TextField(blank=True, help_text="content of the TTTTTTTT.history file")
    history_sha256 = models.CharField(max_length=64, blank=True)
    first_seen_at = models.DateTimeField(auto_now_add=True)

    objects: ClassVar[ScopedManager] = ScopedManager()  # type: ignore[assignment]
    all_servers = models.Manager()

    class Meta:
        ordering = ["tli"]
        constraints = [models.UniqueConstraint(fields=["server", "tli"], name="uniq_timeline")]

    def __str__(self) -> str:
        return f"timeline {self.tli}"

    @property
    def switch_lsn_text(self) -> str:
        return walnames.format_lsn(self.switch_lsn) if self.switch_lsn is not None else ""


class WalSegment(models.Model):
    server = server_field("segments")
    timeline = models.PositiveIntegerField()
    segno = models.BigIntegerField()
    name = models.CharField(max_length=24, help_text="file name without .partial")
    start_lsn = models.BigIntegerField()
    end_lsn = models.BigIntegerField(help_text="exclusive")
    size = models.BigIntegerField(help_text="bytes on disk; grows while partial")
    is_partial = models.BooleanField(default=False, db_index=True)
    sha256 = models.CharField(max_length=64, blank=True, help_text="of the complete file")
    first_commit_at = models.DateTimeField(null=True, blank=True)
    last_commit_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_commit_lsn = models.BigIntegerField(null=True, blank=True)
    commit_count = models.IntegerField(default=0)
    scanned_to = models.BigIntegerField(default=0, help_text="LSN up to which pg_waldump has read this segment")
    mtime_ns = models.BigIntegerField(default=0, help_text="file mtime at the last index pass")
    # Indexed: the dashboard asks for the few rows whose file left the archive on every refresh.
    in_local_archive = models.BooleanField(default=True, db_index=True)
    indexed_at = models.DateTimeField(auto_now=True)
    # Set when a complete segment's content no longer matches sha256 (which stays the truth).
    corrupt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    corrupt_detail = models.TextField(blank=True)
    checked_at = models.DateTimeField(null=True, blank=True, help_text="last scrub that re-hashed the file")

    objects: ClassVar[ScopedManager] = ScopedManager()  # type: ignore[assignment]
    all_servers = models.Manager()

    class Meta:
        ordering = ["timeline", "segno"]
        constraints = [models.UniqueConstraint(fields=["server", "timeline", "segno"], name="uniq_segment")]
        indexes = [models.Index(fields=["server", "timeline", "last_commit_at"], name="walseg_server_tl_commit")]

    def __str__(self) -> str:
        return self.file_name

    @property
    def file_name(self) -> str:
        return self.name + (".partial" if self.is_partial else "")

    @property
    def start_lsn_text(self) -> str:
        return walnames.format_lsn(self.start_lsn)

    @property
    def end_lsn_text(self) -> str:
        return walnames.format_lsn(self.end_lsn)


# The one default, for the command, the dashboard form, the admin and the model: zstd packs WAL-heavy
# databases tighter than gzip at a fraction of its CPU.
DEFAULT_COMPRESSION = Compression.ZSTD


class BaseBackup(Job):
    """A pg_basebackup in tar format; offered for restore only once verified."""
    kind = "backup"

    server = server_field("backups")
    label = models.CharField(max_length=100)
    compression = models.CharField(max_length=8, choices=Compression.choices, default=DEFAULT_COMPRESSION)
    path = models.CharField(max_length=500, blank=True)
    pinned = models.BooleanField(default=False, help_text="kept by retention whatever the policy says")
    timeline = models.PositiveIntegerField(null=True, blank=True)
    start_lsn = models.BigIntegerField(null=True, blank=True)
    stop_lsn = models.BigIntegerField(null=True, blank=True)
    start_time = models.DateTimeField(null=True, blank=True)
    stop_time = models.DateTimeField(null=True, blank=True)
    size_raw = models.BigIntegerField(null=True, blank=True, help_text="bytes of the cluster")
    size_stored = models.BigIntegerField(null=True, blank=True, help_text="bytes on disk after compression")
    manifest_verified = models.BooleanField(default=False)
    file_hashes = models.JSONField(default=dict, blank=True,
                                   help_text="{file: {size, sha256}} of the verified backup; the scrub re-hashes them")
    corrupt_at = models.DateTimeField(null=True, blank=True, help_text="when a local file stopped matching file_hashes")
    corrupt_detail = models.CharField(max_length=300, blank=True)
    segment_size = models.BigIntegerField(null=True, blank=True)

    objects: ClassVar[ScopedManager] = ScopedManager()  # type: ignore[assignment]
    all_servers = models.Manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "base backup"
        constraints = [models.UniqueConstraint(fields=["server", "label"], name="uniq_backup_label")]

    def __str__(self) -> str:
        return self.label

    @property
    def restorable(self) -> bool:
        return self.state == JobState.DONE and self.manifest_verified

    def on_reaped(self) -> None:
        from walcatalog.backups import clean_killed_backup  # the domain module imports this one

        with using(self.server):  # the reaper sees every server's jobs
            clean_killed_backup(self)

    @property
    def start_lsn_text(self) -> str:
        return walnames.format_lsn(self.start_lsn) if self.start_lsn is not None else ""

    @property
    def stop_lsn_text(self) -> str:
        return walnames.format_lsn(self.stop_lsn) if self.stop_lsn is not None else ""


class StorageCopy(models.Model):
    """One copy of a file in a configured storage (django-storages backend)."""

    class Kind(models.TextChoices):
        WAL = "wal"
        HISTORY = "history"
        BACKUP = "backup"
        DESCRIPTOR = "descriptor"
        PARTIAL = "partial"  # a snapshot of the growing .partial: its valid prefix, replaced as it grows

    server = server_field("storage_copies")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    storage = models.CharField(max_length=300, help_text="where: backend, endpoint, bucket/container/directory "
                                                             "(walcatalog.storage.identity)")
    key = models.CharField(max_length=500)
    segment = models.ForeignKey(WalSegment, null=True, blank=True, on_delete=models.CASCADE, related_name="copies")
    backup = models.ForeignKey(BaseBackup, null=True, blank=True, on_delete=models.CASCADE, related_name="copies")
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    uploaded_at = models.DateTimeField()
    verified_at = models.DateTimeField(null=True, blank=True)
    # A .partial snapshot's own newest commit (the segment row's goes on growing with the local file).
    last_commit_at = models.DateTimeField(null=True, blank=True)
    last_commit_lsn = models.BigIntegerField(null=True, blank=True)

    objects: ClassVar[ScopedManager] = ScopedManager()  # type: ignore[assignment]
    all_servers = models.Manager()

    class Meta:
        ordering = ["key"]
        verbose_name_plural = "storage copies"
        constraints = [models.UniqueConstraint(fields=["storage", "key"], name="uniq_storage_key")]

    def __str__(self) -> str:
        return f"{self.storage}:{self.key}"

    @classmethod
    def verified(cls, storage_name: str | None = None) -> models.QuerySet[StorageCopy]:
        """The copies that count: verified, and in the storage configured now. A copy in a bucket this home
        no longer points at cannot be downloaded, so it holds nothing (walstatus, gaps, the planner)."""
        from walcatalog import storage as st  # storage reads settings; models stay importable without them

        return cls.objects.filter(storage=st.identity(storage_name or st.STORAGE_NAME), verified_at__isnull=False)


class RestorePoint(models.Model):
    """A named restore point (pg_create_restore_point) found in the captured WAL."""

    server = server_field("restore_points")
    name = models.CharField(max_length=64, db_index=True)
    timeline = models.PositiveIntegerField()
    lsn = models.BigIntegerField()
    segment = models.ForeignKey(WalSegment, null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="restore_points")

    objects: ClassVar[ScopedManager] = ScopedManager()  # type: ignore[assignment]
    all_servers = models.Manager()

    class Meta:
        ordering = ["lsn"]
        constraints = [models.UniqueConstraint(fields=["server", "timeline", "lsn"], name="uniq_restore_point")]

    def __str__(self) -> str:
        return f"{self.name} at {walnames.format_lsn(self.lsn)}"
