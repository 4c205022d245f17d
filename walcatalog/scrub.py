"""Scrub: re-hash complete local WAL segments against their cataloged sha256, at a bounded rate.

Oldest-checked first (never-checked first of all), so repeated runs cover the whole archive.
A mismatch marks the row corrupt (the cataloged sha256 stays the truth) long before a restore needs it.
Then the local files of each restorable base backup, against the sha256 recorded when it was verified: a
rotted one marks the backup corrupt, and a restore then takes its storage copy or an older backup.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from pitrsite.output import Result
from walcatalog import storage as st
from walcatalog.backups import backup_dir, restorable_backups
from walcatalog.models import BaseBackup, WalSegment

log = logging.getLogger(__name__)


@dataclass
class ScrubResult(Result):
    checked: int = 0
    corrupt: int = 0
    bytes: int = 0

    def __str__(self) -> str:
        return f"{self.checked} segments checked ({self.bytes} bytes), {self.corrupt} corrupt"



def scrub_archive(archive_dir: Path | None = None, mb_per_s: float | None = None,
                  max_seconds: float | None = None) -> ScrubResult:
    archive = Path(archive_dir or settings.PITR_WAL_ARCHIVE)
    rate = (mb_per_s if mb_per_s is not None else settings.PITR_SCRUB_MB_PER_S) * 1e6
    began, result = time.monotonic(), ScrubResult()
    rows = (WalSegment.objects.filter(is_partial=False, in_local_archive=True, corrupt_at__isnull=True)
            .exclude(sha256="").order_by(F("checked_at").asc(nulls_first=True), "timeline", "segno"))
    for seg in rows.iterator():
        if max_seconds is not None and time.monotonic() - began > max_seconds:
            break
        try:
            found = st.sha256_file(archive / seg.name)[1]
        except FileNotFoundError:
            continue  # the indexer marks it vanished
        result.checked += 1
        result.bytes += seg.size
        fields: dict[str, Any] = {"checked_at": timezone.now()}
        if found != seg.sha256:
            result.corrupt += 1
            fields.update(corrupt_at=fields["checked_at"],
                          corrupt_detail=f"scrub: sha256 {found[:12]}... on disk, {seg.sha256[:12]}... when indexed")
            log.warning("scrub: %s is corrupt (%s)", seg.name, fields["corrupt_detail"])
        WalSegment.objects.filter(pk=seg.pk).update(**fields)
        if rate > 0:  # sleep off what we read faster than the allowed rate
            time.sleep(max(0.0, result.bytes / rate - (time.monotonic() - began)))
    _scrub_backups(result, rate, began, max_seconds)
    return result


def _scrub_backups(result: ScrubResult, rate: float, began: float, max_seconds: float | None) -> None:
    """Re-hash the local files of each restorable backup against what was recorded when it was verified."""
    for backup in restorable_backups().filter(corrupt_at__isnull=True).exclude(file_hashes={}):
        local = backup_dir(backup)
        for name, want in backup.file_hashes.items():
            if max_seconds is not None and time.monotonic() - began > max_seconds:
                return
            try:
                size, found = st.sha256_file(local / name)
            except FileNotFoundError:
                continue  # gone locally (retention, or lost): a restore takes its storage copy
            result.checked += 1
            result.bytes += size
            if found != want["sha256"]:
                result.corrupt += 1
                detail = f"scrub: {name} sha256 {found[:12]}... on disk, {want['sha256'][:12]}... when verified"
                BaseBackup.objects.filter(pk=backup.pk).update(corrupt_at=timezone.now(), corrupt_detail=detail)
                log.warning("scrub: backup %s is corrupt (%s)", backup.label, detail)
                break
            if rate > 0:
                time.sleep(max(0.0, result.bytes / rate - (time.monotonic() - began)))
