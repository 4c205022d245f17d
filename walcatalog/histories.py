"""Timelines from .history files: which ones describe this archive's WAL, and which are gone.

A history file becomes a timeline row only if it branches from an older timeline held here, at a
point inside that timeline's WAL; a stray or foreign one is junk (one warning), never a restore target.
"""
from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction
from django.db.models import Max

from walcatalog import walnames
from walcatalog.indexrows import File, warn_junk
from walcatalog.models import BaseBackup, Timeline, WalSegment

if TYPE_CHECKING:
    from walcatalog.indexer import IndexResult

log = logging.getLogger("walcatalog.indexer")


def ensure_timelines(tlis: set[int]) -> None:
    missing = tlis - set(Timeline.objects.filter(tli__in=tlis).values_list("tli", flat=True))
    if missing:
        Timeline.objects.bulk_create([Timeline(tli=t) for t in sorted(missing)], ignore_conflicts=True)


def _inconsistent(tli: int, last: walnames.HistoryEntry, files: dict, seg_size: int) -> str | None:
    """Why a history file cannot describe this archive's WAL, or None: it must branch from an older
    timeline that the catalog or the archive holds, at a point inside that timeline's WAL."""
    parent = last.parent_timeline
    if parent >= tli:
        return f"it branches from timeline {parent}, not an older one"
    prefix = f"{parent:08X}"
    held = (walnames.parse_wal_name(name[:24], seg_size) for name in files
            if name.startswith(prefix) and len(name) >= 24 and walnames.is_wal_name(name[:24], seg_size))
    ends = [walnames.segment_end_lsn(w.segno, seg_size) for w in held if w.segno is not None]
    ends += [e for e in WalSegment.objects.filter(timeline=parent).aggregate(e=Max("end_lsn")).values() if e]
    if not ends and f"{prefix}.history" not in files and not Timeline.objects.filter(tli=parent).exists():
        return f"its parent timeline {parent} is not in the catalog"
    if ends and last.switch_lsn > max(ends):
        return (f"it switches at {walnames.format_lsn(last.switch_lsn)}, after the end of timeline {parent}'s "
                f"WAL held here ({walnames.format_lsn(max(ends))})")
    return None


def index_history(f: File, files: dict, seg_size: int, result: IndexResult) -> None:
    wal = walnames.parse_wal_name(f.name, seg_size)
    try:
        content = f.path.read_bytes()
    except FileNotFoundError:
        return
    digest = hashlib.sha256(content).hexdigest()
    if Timeline.objects.filter(tli=wal.timeline, history_sha256=digest).exists():
        return
    try:
        text = content.decode()
        entries = walnames.parse_history(text)
    except (UnicodeDecodeError, walnames.WalNameError) as exc:
        result.junk += 1
        warn_junk(f.name, f"not a valid timeline history file ({exc})")
        return
    last = entries[-1] if entries else None
    problem = _inconsistent(wal.timeline, last, files, seg_size) if last is not None else None
    if problem:
        result.junk += 1
        warn_junk(f.name, f"{problem}: not a history of the WAL captured here")
        return
    defaults = dict(parent_tli=last.parent_timeline if last else None,
                    switch_lsn=last.switch_lsn if last else None, history=text, history_sha256=digest)
    for _ in range(2):  # a second indexer may create the row between our get and our insert
        try:
            with transaction.atomic():
                Timeline.objects.update_or_create(tli=wal.timeline, defaults=defaults)
            break
        except IntegrityError:
            continue
    result.timelines += 1


def forget_histories(files: dict) -> None:
    """A timeline row from a history file that is gone, with no WAL and no backup, is no timeline."""
    stray = [t for t in Timeline.objects.exclude(history_sha256="").values_list("tli", flat=True)
             if f"{t:08X}.history" not in files]
    if not stray:
        return
    used = set(WalSegment.objects.filter(timeline__in=stray).order_by().values_list("timeline", flat=True)
               .distinct()) | set(BaseBackup.objects.filter(timeline__in=stray).values_list("timeline", flat=True))
    gone = [t for t in stray if t not in used]
    if gone and Timeline.objects.filter(tli__in=gone).delete()[0]:
        log.warning("timeline history file(s) gone, timeline(s) without WAL forgotten: %s",
                    ", ".join(map(str, gone)))
