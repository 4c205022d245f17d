"""Scrub: re-hash complete local WAL segments against their cataloged sha256, at a bounded rate.

Oldest-checked first (never-checked first of all), so repeated runs cover the whole archive.
A mismatch marks the row corrupt (the cataloged sha256 stays the truth) long before a restore needs it.
Base backup files are not scrubbed yet: their tar members are verified by pg_verifybackup at backup time.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from walcatalog.indexer import sha256_file
from walcatalog.models import WalSegment

log = logging.getLogger(__name__)


@dataclass
class ScrubResult:
    checked: int = 0
    corrupt: int = 0
    bytes: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


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
            found = sha256_file(archive / seg.name)
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
    return result
