"""Questions asked of the WAL catalog: segment size, gaps, the recoverable window, a summary.

The dashboard asks these every few seconds of a catalog that may hold 100k
segments, so everything here is an aggregate query; only the rows around a
hole are ever read one by one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg
from django.conf import settings
from django.db.models import Count, Exists, F, Max, Min, OuterRef, Q, QuerySet, Sum, Window as W
from django.db.models.functions import Lead

from pitrsite.errors import PitrError
from pitrsite.jobs import JobState
from walcatalog import walnames
from walcatalog.models import BaseBackup, StorageCopy, Timeline, WalSegment

log = logging.getLogger(__name__)

_segment_size: int | None = None


# --- segment size -------------------------------------------------------------
def segment_size(archive_dir: Path | None = None) -> int:
    """The cluster's wal_segment_size: asked of the primary once per process, never assumed."""
    global _segment_size
    if _segment_size is None:
        size = _size_from_primary() or _size_from_catalog() or _size_from_archive(
            Path(archive_dir or settings.PITR_WAL_ARCHIVE))
        if size is None:
            raise PitrError("cannot tell the WAL segment size: the primary is not reachable and the archive holds "
                            "no segment yet; start it with `python manage.py fleet up`")
        _segment_size = walnames.validate_segment_size(size)
    return _segment_size


def _size_from_primary() -> int | None:
    from fleet import pg
    from fleet.layout import Layout

    try:
        with pg.connect(Layout.port("primary"), dbname="postgres", timeout=3) as conn:
            row = conn.execute("SELECT setting::bigint, unit FROM pg_settings WHERE name = 'wal_segment_size'"
                               ).fetchone()
    except (PitrError, psycopg.Error) as exc:
        log.info("WAL segment size not read from the primary (%s); using the archive", exc)
        return None
    setting, unit = row
    return setting * {"B": 1, "kB": 1024, "MB": 1 << 20, "8kB": 8192}.get(unit or "B", 1)


def _size_from_catalog() -> int | None:
    row = WalSegment.objects.values_list("start_lsn", "end_lsn").first()
    return row[1] - row[0] if row else None


def _size_from_archive(archive: Path) -> int | None:
    """A complete segment's file size is the segment size (a .partial is padded to it too)."""
    try:
        names = sorted((p for p in archive.iterdir() if len(p.name) == 24 and walnames.is_wal_name(p.name, walnames.MIN_SEGMENT_SIZE)),
                       reverse=True)
    except FileNotFoundError:
        return None
    for path in names:
        try:
            return walnames.validate_segment_size(path.stat().st_size)
        except (walnames.WalNameError, FileNotFoundError):
            continue
    return None


# --- what the catalog holds -----------------------------------------------------
def held() -> QuerySet[WalSegment]:
    """Segments we can still restore from: in the local archive or copied to a storage."""
    return WalSegment.objects.filter(
        Q(in_local_archive=True) | Exists(StorageCopy.objects.filter(segment=OuterRef("pk")))).order_by()


@dataclass(frozen=True)
class Gap:
    """Segments ``first``..``last`` (inclusive) of a timeline that the catalog does not hold."""

    timeline: int
    first: int
    last: int
    segment_size: int

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    @property
    def first_name(self) -> str:
        return walnames.segment_name(self.timeline, self.first, self.segment_size)

    @property
    def last_name(self) -> str:
        return walnames.segment_name(self.timeline, self.last, self.segment_size)

    @property
    def start_lsn(self) -> int:
        return walnames.segment_start_lsn(self.first, self.segment_size)

    @property
    def end_lsn(self) -> int:
        return walnames.segment_end_lsn(self.last, self.segment_size)

    @property
    def text(self) -> str:
        what = self.first_name if self.count == 1 else f"{self.first_name}..{self.last_name} ({self.count} segments)"
        return (f"timeline {self.timeline}: missing {what}, LSN {walnames.format_lsn(self.start_lsn)}"
                f"..{walnames.format_lsn(self.end_lsn)}")

    def as_dict(self) -> dict:
        return {"timeline": self.timeline, "first": self.first, "last": self.last, "count": self.count,
                "first_name": self.first_name, "last_name": self.last_name,
                "start_lsn": walnames.format_lsn(self.start_lsn), "end_lsn": walnames.format_lsn(self.end_lsn),
                "text": self.text}


def _expected_ranges(spans: dict[int, tuple[int, int]], seg_size: int) -> dict[int, tuple[int, int]]:
    """Per timeline, the segnos that must all be there, given where timelines branch.

    ``spans`` is (lowest, highest) segno held per timeline. A child timeline
    that capture followed starts at its switch segment (when the archive
    reaches back to the switch), and its parent is expected up to the segment
    before it: from the switch on, the child's files hold the parent's WAL,
    and parent segments past the switch belong to an abandoned history.
    """
    expected = dict(spans)
    ends: dict[int, int] = {}
    branches = Timeline.objects.filter(parent_tli__isnull=False, switch_lsn__isnull=False).values_list(
        "tli", "parent_tli", "switch_lsn")
    for tli, parent, switch_lsn in branches:
        switch_seg = walnames.segment_of_lsn(switch_lsn, seg_size)
        if tli not in spans or parent not in spans or spans[parent][0] > switch_seg:
            continue  # a branch capture never followed, or one from before the archive begins
        ends[parent] = min(ends.get(parent, switch_seg), switch_seg)
        expected[tli] = (min(switch_seg, spans[tli][0]), spans[tli][1])
    for parent, switch_seg in ends.items():
        expected[parent] = (expected[parent][0], switch_seg - 1)
    return expected


def gaps(timeline: int | None = None) -> list[Gap]:
    """Runs of missing segments per timeline (all timelines, or one), oldest first."""
    spans = {row["timeline"]: (row["lo"], row["hi"])
             for row in held().values("timeline").annotate(lo=Min("segno"), hi=Max("segno"))}
    if not spans or (timeline is not None and timeline not in spans):
        return []
    seg_size = segment_size()
    expected = _expected_ranges(spans, seg_size)
    if timeline is not None:
        expected = {timeline: expected[timeline]}
    result: list[Gap] = []
    for tli, (lo, hi) in sorted(expected.items()):
        if hi < lo:
            continue
        rows = held().filter(timeline=tli, segno__gte=lo, segno__lte=hi)
        stats = rows.aggregate(n=Count("id"), first=Min("segno"), last=Max("segno"))
        if stats["n"] == hi - lo + 1:
            continue  # the common case: complete, found by one count
        result.extend(_holes(tli, lo, hi, rows, stats, seg_size))
    return result


def _holes(tli: int, lo: int, hi: int, rows: QuerySet, stats: dict, seg_size: int) -> list[Gap]:
    if not stats["n"]:
        return [Gap(tli, lo, hi, seg_size)]
    found = []
    if stats["first"] > lo:
        found.append(Gap(tli, lo, stats["first"] - 1, seg_size))
    # Only rows followed by a hole come back: the window function finds them in the database.
    after = rows.annotate(next_segno=W(Lead("segno"), order_by=F("segno").asc())).filter(
        next_segno__gt=F("segno") + 1).values_list("segno", "next_segno")
    found.extend(Gap(tli, segno + 1, nxt - 1, seg_size) for segno, nxt in after)
    if stats["last"] < hi:
        found.append(Gap(tli, stats["last"] + 1, hi, seg_size))
    return sorted(found, key=lambda g: g.first)


# --- the recoverable window ------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """From ``start`` (a base backup's end, or the oldest captured commit) to the newest captured commit."""

    start: datetime | None
    start_lsn: int
    end: datetime | None
    end_lsn: int
    timeline: int | None
    based_on: str  # "base backup" or "oldest segment"
    backup_id: int | None = None
    backup_label: str = ""
    limited_by_gap: Gap | None = None

    @property
    def description(self) -> str:
        origin = (f"base backup {self.backup_label} (#{self.backup_id})" if self.based_on == "base backup"
                  else "the oldest segment (no verified base backup yet)")
        text = f"from {_iso(self.start)} to {_iso(self.end)}, based on {origin}"
        if self.limited_by_gap:
            text += f"; ends before the gap {self.limited_by_gap.text}"
        return text

    def as_dict(self) -> dict:
        return {"start": self.start, "start_lsn": walnames.format_lsn(self.start_lsn), "end": self.end,
                "end_lsn": walnames.format_lsn(self.end_lsn), "timeline": self.timeline,
                "based_on": self.based_on, "backup_id": self.backup_id, "backup_label": self.backup_label,
                "limited_by_gap": self.limited_by_gap.as_dict() if self.limited_by_gap else None,
                "description": self.description}


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment else "unknown"


def recoverable_window() -> Window | None:
    """The moments a restore can reach now; None when there is nothing to restore from."""
    backup = (BaseBackup.objects.filter(state=JobState.DONE, manifest_verified=True, stop_lsn__isnull=False)
              .order_by("stop_lsn").first())
    segments = held()
    if backup is not None:
        start, start_lsn, tli = backup.stop_time, backup.stop_lsn, backup.timeline
    else:
        first = segments.aggregate(lsn=Min("start_lsn"), at=Min("first_commit_at"))
        if first["lsn"] is None or first["at"] is None:
            return None
        start, start_lsn, tli = first["at"], first["lsn"], None
    gap = next((g for g in gaps() if g.end_lsn > start_lsn), None)
    if gap is not None:
        segments = segments.filter(end_lsn__lte=gap.start_lsn)
    newest = segments.filter(last_commit_lsn__gte=start_lsn).aggregate(
        at=Max("last_commit_at"), lsn=Max("last_commit_lsn"), tli=Max("timeline"))
    end, end_lsn = newest["at"], newest["lsn"]
    if end is None or (start is not None and end < start):
        end, end_lsn = start, start_lsn  # nothing committed after the backup yet: only its own end
    return Window(start, start_lsn, end, end_lsn, newest["tli"] or tli,
                  "base backup" if backup else "oldest segment",
                  backup.pk if backup else None, backup.label if backup else "", gap)


# --- one summary for walstatus, the dashboard and metrics -----------------------------------
def summary(with_fleet: bool = True) -> dict:
    """Segments per timeline, newest segment, partial, gaps, window and capturer lag."""
    segs = WalSegment.objects.order_by()
    timelines = {t.tli: t for t in Timeline.objects.all()}
    per_tli = []
    for row in segs.values("timeline").annotate(
            segments=Count("id"), complete=Count("id", filter=Q(is_partial=False)),
            partial=Count("id", filter=Q(is_partial=True)), local=Count("id", filter=Q(in_local_archive=True)),
            first=Min("segno"), last=Max("segno"), bytes=Sum("size"), newest_commit=Max("last_commit_at"),
    ).order_by("timeline"):
        t = timelines.get(row["timeline"])
        row["parent"] = t.parent_tli if t else None
        row["switch_lsn"] = t.switch_lsn_text if t and t.switch_lsn is not None else None
        per_tli.append(row)
    newest = segs.filter(is_partial=False).order_by("-timeline", "-segno").first()
    partial = segs.filter(is_partial=True).order_by("-timeline", "-segno").first()
    window = recoverable_window()
    result = {
        "segment_size": _segment_size_or_none(),
        "segments": sum(r["segments"] for r in per_tli),
        "timelines": per_tli,
        "newest_segment": _segment_dict(newest),
        "partial": _segment_dict(partial),
        "gaps": [g.as_dict() for g in gaps()],
        "window": window.as_dict() if window else None,
        "last_indexed_at": segs.aggregate(at=Max("indexed_at"))["at"],
    }
    if with_fleet:
        result["capturer"] = capturer_state()
    return result


def _segment_size_or_none() -> int | None:
    try:
        return segment_size()
    except PitrError:
        return None


def _segment_dict(seg: WalSegment | None) -> dict | None:
    if seg is None:
        return None
    return {"name": seg.file_name, "timeline": seg.timeline, "segno": seg.segno, "size": seg.size,
            "partial": seg.is_partial, "captured_to": walnames.format_lsn(seg.scanned_to) if seg.is_partial else None,
            "sha256": seg.sha256 or None, "commits": seg.commit_count, "first_commit_at": seg.first_commit_at,
            "last_commit_at": seg.last_commit_at, "indexed_at": seg.indexed_at}


def capturer_state() -> dict:
    """The capturer's process state and lag; a down primary is a state to show, not an error."""
    from fleet.status import fleet_status

    try:
        status = fleet_status()
    except (PitrError, OSError, psycopg.Error) as exc:
        return {"state": "unknown", "errors": [str(exc).splitlines()[0] if str(exc) else type(exc).__name__]}
    role = status["roles"]["capturer"]
    capture = status.get("capturer") or {}
    return {"state": role["state"], "pid": role.get("pid"), "restarts": role.get("restarts"),
            "streaming": capture.get("streaming"), "flush_lsn": capture.get("flush_lsn"),
            "lag_bytes": capture.get("lag_bytes"), "lag_seconds": capture.get("lag_seconds"),
            "primary_lsn": status.get("primary_lsn"), "errors": status.get("errors", [])}
