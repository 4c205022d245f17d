"""Retention: delete old backups and WAL, locally and in storage, never what a kept restore needs.

Policy (the server's own, else the settings): keep the newest PITR_RETENTION_KEEP_BACKUPS verified
backups and/or every moment of the last PITR_RETENTION_DAYS days. A moment
T is restorable from the newest verified backup that ends at or before T, so
the recovery window keeps every backup that ends inside it *plus* the newest
one that ends before it began. With both limits set, what either keeps is
kept; with neither, nothing is deleted.

Everything older than the oldest kept backup can go: backups (their
directory, their storage objects, their catalog row) and WAL segments that
end before that backup's start LSN (their files, objects and rows), on every
timeline. ``.history`` files are never deleted (a few bytes, and every later
timeline's history needs them), nor the ``.partial``, nor anything at or
after the oldest kept backup's start. Without a verified backup there is
nothing to anchor a window, and nothing is deleted.

A backup row a restore job still points at is kept as history, marked
not restorable (manifest_verified off) with a note in its error text.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from fleet import servers
from fleet.layout import Layout
from pitrsite import locks
from pitrsite.errors import RetentionError, first_line
from pitrsite.jobs import ACTIVE_STATES, Reporter
from pitrsite.output import Result
from walcatalog import server_policy
from walcatalog import storage as st
from walcatalog import walnames
from walcatalog.backups import backup_dir, restorable_backups
from walcatalog.models import BaseBackup, RestorePoint, StorageCopy, WalSegment

log = logging.getLogger(__name__)


REMOVED = "removed by retention"


@dataclass
class RetentionResult(Result):
    policy: str = ""
    dry_run: bool = False
    oldest_kept_backup: str | None = None
    keep_from_lsn: str | None = None
    recoverable_from: str | None = None  # the oldest moment still restorable after this pass
    kept_backups: list[str] = field(default_factory=list)
    deleted_backups: list[str] = field(default_factory=list)
    deleted_segments: int = 0
    first_deleted_segment: str | None = None
    last_deleted_segment: str | None = None
    deleted_local_files: int = 0
    deleted_objects: int = 0
    freed_bytes: int = 0  # local plus remote
    seconds: float = 0.0
    note: str = ""
    errors: list[str] = field(default_factory=list)


    def __str__(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        if self.note:
            return f"{self.policy}: {self.note}"
        segs = (f"{self.deleted_segments} WAL segment(s) ({self.first_deleted_segment}..{self.last_deleted_segment})"
                if self.deleted_segments else "no WAL segment")
        return (f"{self.policy}: keeping {len(self.kept_backups)} backup(s) from {self.oldest_kept_backup} "
                f"(restorable from {self.recoverable_from}); {verb} {len(self.deleted_backups)} backup(s), {segs}, "
                f"{self.deleted_local_files} local file(s), {self.deleted_objects} storage object(s), "
                f"{self.freed_bytes:,} bytes")


@dataclass
class Policy:
    keep_backups: int = 0
    days: float = 0.0

    @classmethod
    def of_server(cls) -> "Policy":
        """The current server's own policy, else the settings' (walcatalog.server_policy)."""
        return cls(*server_policy.retention())

    @property
    def active(self) -> bool:
        return self.keep_backups > 0 or self.days > 0

    def __str__(self) -> str:
        parts = ([f"keep {self.keep_backups} backup(s)"] if self.keep_backups else []) + \
                ([f"recovery window {self.days:g} day(s)"] if self.days else [])
        return " and ".join(parts) or "no retention policy (PITR_RETENTION_KEEP_BACKUPS and PITR_RETENTION_DAYS are 0)"


def kept_backups(policy: Policy, now: datetime) -> list[BaseBackup]:
    """The verified backups the policy keeps, newest first."""
    backups = list(restorable_backups())  # newest end first
    keep: set[int] = set()
    if policy.keep_backups:
        keep |= {b.pk for b in backups[:policy.keep_backups]}
    if policy.days:
        window_start = now - timedelta(days=policy.days)
        inside = [b for b in backups if b.stop_time and b.stop_time >= window_start]
        before = next((b for b in backups if b.stop_time and b.stop_time < window_start), None)
        keep |= {b.pk for b in inside} | ({before.pk} if before else set())
    keep |= {b.pk for b in backups if b.pinned}  # pinned: never removed, whatever the policy
    return [b for b in backups if b.pk in keep]


def status_of_backups(now: datetime | None = None) -> dict[int, str]:
    """{backup id: kept, pinned, obsolete (the next pass removes it), removed, or not restorable}."""
    policy = Policy.of_server()
    kept = {b.pk for b in kept_backups(policy, now or timezone.now())} if policy.active else None
    result = {}
    for pk, pinned, verified, state, error in BaseBackup.objects.values_list(
            "pk", "pinned", "manifest_verified", "state", "error"):
        if error.startswith(REMOVED):
            result[pk] = "removed"
        elif pinned:
            result[pk] = "pinned"
        elif not verified or state != "done":
            result[pk] = "not restorable"
        else:
            result[pk] = "kept" if kept is None or pk in kept else "obsolete"
    return result


def apply_retention(policy: Policy | None = None, dry_run: bool = False, now: datetime | None = None,
                    reporter: Reporter | None = None) -> RetentionResult:
    """One retention pass (beat, or `manage.py retention`); a dry run only reports."""
    policy = policy or Policy.of_server()
    began = time.monotonic()
    result = RetentionResult(policy=str(policy), dry_run=dry_run)
    if not policy.active:
        result.note = "nothing is deleted"
        return result
    # Never with a backup, an upload or a restore running: each reads files this pass may delete.
    with locks.all_held(*(servers.lock(lock) for lock in (locks.RETENTION, locks.BACKUP, locks.UPLOAD, locks.RESTORE))):
        _pass(policy, dry_run, now or timezone.now(), result, reporter)
    result.seconds = round(time.monotonic() - began, 3)
    return result


def _pass(policy: Policy, dry_run: bool, now: datetime, result: RetentionResult, reporter: Reporter | None) -> None:
    kept = kept_backups(policy, now)
    if not kept:
        result.note = "no verified backup yet: nothing is deleted"
        return
    # a verified backup has its start and stop LSNs
    oldest = min(kept, key=lambda b: cast(int, b.stop_lsn))
    assert oldest.stop_lsn is not None
    seg_size = oldest.segment_size or walnames.DEFAULT_SEGMENT_SIZE
    # From the segment holding the earliest kept start: a backup's own pg_wal.tar covers start..stop, but
    # a segment is the unit of deletion and one segment of margin costs nothing.
    start = min(cast(int, b.start_lsn) for b in kept)
    keep_from = walnames.segment_start_lsn(walnames.segment_of_lsn(start, seg_size), seg_size)
    result.oldest_kept_backup = oldest.label
    result.keep_from_lsn = walnames.format_lsn(keep_from)
    result.recoverable_from = oldest.stop_time.isoformat() if oldest.stop_time else None
    result.kept_backups = [b.label for b in kept]

    kept_ids = {b.pk for b in kept}
    # Verified backups older than the oldest kept one, and failed/interrupted ones started before it.
    old_backups = [b for b in BaseBackup.objects.exclude(pk__in=kept_ids).exclude(state__in=ACTIVE_STATES)
                   .exclude(error__startswith=REMOVED).exclude(pinned=True)
                   if (b.stop_lsn is not None and b.stop_lsn <= oldest.stop_lsn)
                   or (b.stop_lsn is None and b.created_at < oldest.created_at)]
    segments = list(WalSegment.objects.filter(end_lsn__lte=keep_from, is_partial=False).order_by("segno", "timeline"))
    result.deleted_backups = [b.label for b in old_backups]
    result.deleted_segments = len(segments)
    if segments:
        result.first_deleted_segment, result.last_deleted_segment = segments[0].name, segments[-1].name
    if reporter:
        reporter.step("applying retention" if not dry_run else "retention (dry run)")

    objects = list(StorageCopy.objects.filter(segment__in=segments)) + \
        list(StorageCopy.objects.filter(backup__in=old_backups))
    archive = Layout.current().archive
    local_wal = [archive / s.name for s in segments if (archive / s.name).is_file()]
    local_backups = [d for d in (backup_dir(b) for b in old_backups) if d.is_dir()]
    result.deleted_objects = len(objects)
    result.deleted_local_files = len(local_wal) + sum(1 for d in local_backups for p in d.rglob("*") if p.is_file())
    result.freed_bytes = (sum(c.size for c in objects) + sum(p.stat().st_size for p in local_wal)
                          + sum(p.stat().st_size for d in local_backups for p in d.rglob("*") if p.is_file()))
    if dry_run:
        return

    # Storage first, then local files, then rows: a pass that dies half-way leaves rows that point at
    # less than they did, which the next pass (and `storage check`) simply finishes, never the reverse.
    _delete_objects(objects, result)
    for path in local_wal:
        path.unlink(missing_ok=True)
    for folder in local_backups:
        shutil.rmtree(folder, ignore_errors=True)
    with transaction.atomic():
        StorageCopy.objects.filter(pk__in=[c.pk for c in objects]).delete()
        RestorePoint.objects.filter(lsn__lt=keep_from).delete()
        for i in range(0, len(segments), 500):
            WalSegment.objects.filter(pk__in=[s.pk for s in segments[i:i + 500]]).delete()
        for backup in old_backups:
            _drop_backup(backup, now)
    log.info("retention: %s", result)


def _delete_objects(objects: list[StorageCopy], result: RetentionResult) -> None:
    storage = st.get_storage(st.STORAGE_NAME)
    for copy, _, error in st.parallel(objects, lambda c: st.with_retries(
            lambda: storage.delete(c.key), f"delete of {c.key}"), settings.PITR_UPLOAD_PARALLEL):
        if error is not None:
            result.errors.append(f"{copy.key}: {first_line(error)}")
    if result.errors:
        raise RetentionError(f"retention could not delete {len(result.errors)} storage object(s), first "
                             f"{result.errors[0]}: nothing else was deleted; the next pass tries again")


def _drop_backup(backup: BaseBackup, now: datetime) -> None:
    if backup.restores.exists():  # RestoreJob.backup is PROTECT: keep the row as those jobs' history
        BaseBackup.objects.filter(pk=backup.pk).update(
            manifest_verified=False, path="", error=f"{REMOVED} on {now.date().isoformat()}")
    else:
        backup.delete()


def stored_bytes() -> int:
    return StorageCopy.objects.aggregate(n=Sum("size"))["n"] or 0


__all__ = ["apply_retention", "Policy", "RetentionResult", "RetentionError", "kept_backups", "status_of_backups",
           "stored_bytes"]
