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
from django.db import connection
from django.db.models import Count, Exists, Max, Min, OuterRef, Q, Sum

from fleet import servers
from fleet.layout import Layout
from fleet.status import capture_summary
from pitrsite.errors import PitrError
from pitrsite.jobs import JobState
from walcatalog import walnames
from walcatalog.models import BaseBackup, StorageCopy, Timeline, WalSegment

log = logging.getLogger(__name__)

_segment_size: int | None = None  # the demo server's
_other_sizes: dict[int, int] = {}  # other servers', by id: each has its own (initdb --wal-segsize)


# --- segment size -------------------------------------------------------------
def segment_size(archive_dir: Path | None = None) -> int:
    """The current server's wal_segment_size: asked of it once per process, never assumed."""
    global _segment_size
    server = servers.chosen()
    other = None if server is None or server.managed else server.pk
    known = _segment_size if other is None else _other_sizes.get(other)
    if known is None:
        size = _size_from_primary() or _size_from_catalog() or _size_from_archive(
            Path(archive_dir or Layout.current().archive))
        if size is None:
            raise PitrError("cannot tell the WAL segment size: the primary is not reachable and the archive holds "
                            "no segment yet; start it with `python manage.py fleet up`")
        known = walnames.validate_segment_size(size)
        if other is None:
            _segment_size = known
        else:
            _other_sizes[other] = known
    return known


def _size_from_primary() -> int | None:
    from fleet import pg
    from fleet.local import get_driver

    try:
        with get_driver().connect("primary", dbname="postgres", timeout=3) as conn:
            row = pg.fetch_row(conn.execute("SELECT setting::bigint, unit FROM pg_settings "
                                            "WHERE name = 'wal_segment_size'"))
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
        names = sorted((p for p in archive.iterdir()
                        if len(p.name) == 24 and walnames.is_wal_name(p.name, walnames.MIN_SEGMENT_SIZE)),
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
def timelines_held() -> list[int]:
    """Timelines with segment rows: a loose index scan, a few index probes whatever the row count."""
    found: list[int] = []
    rows = WalSegment.objects.order_by()
    while (tli := rows.filter(timeline__gt=found[-1] if found else -1).aggregate(t=Min("timeline"))["t"]) is not None:
        found.append(tli)
    return found


def segment_spans() -> dict[int, tuple[int, int]]:
    """(lowest, highest) segno per timeline; each a single min/max probe of the (timeline, segno) index."""
    spans = {}
    for tli in timelines_held():
        rows = WalSegment.objects.filter(timeline=tli).order_by()
        spans[tli] = (rows.aggregate(v=Min("segno"))["v"], rows.aggregate(v=Max("segno"))["v"])
    return spans


def not_held() -> set[tuple[int, int]]:
    """(timeline, segno) of rows with no good copy: gone or corrupt locally, and no verified storage copy.

    The same rule as restores.planner._wal_range, so walstatus and the planner agree on gaps.
    """
    copies = StorageCopy.objects.filter(segment=OuterRef("pk"), verified_at__isnull=False)
    # in_local_archive__in=[False]: SQLite gets "IN (0)", which uses the index; "NOT column" would scan.
    bad = Q(in_local_archive__in=[False]) | Q(corrupt_at__isnull=False)
    return set(WalSegment.objects.filter(bad).filter(~Exists(copies)).values_list("timeline", "segno"))


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
        assert switch_lsn is not None  # filtered on switch_lsn
        switch_seg = walnames.segment_of_lsn(switch_lsn, seg_size)
        if tli not in spans or parent not in spans or spans[parent][0] > switch_seg:
            continue  # a branch capture never followed, or one from before the archive begins
        ends[parent] = min(ends.get(parent, switch_seg), switch_seg)
        expected[tli] = (min(switch_seg, spans[tli][0]), spans[tli][1])
    for parent, switch_seg in ends.items():
        expected[parent] = (expected[parent][0], switch_seg - 1)
    return expected


def gaps(timeline: int | None = None, lost: set[tuple[int, int]] | None = None) -> list[Gap]:
    """Runs of missing segments per timeline (all timelines, or one), oldest first.

    A segment is missing when it has no row, or its row says the file left the
    local archive and no storage holds a copy (``lost``: not_held(), when the
    caller has it already).
    """
    spans = segment_spans()
    lost = not_held() if lost is None else lost
    if lost:
        spans = _held_spans(spans, lost)
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
        missing = [(segno, segno) for t, segno in lost if t == tli and lo <= segno <= hi]
        n = WalSegment.objects.filter(timeline=tli, segno__gte=lo, segno__lte=hi).order_by().count()
        if n != hi - lo + 1:  # the common case, complete, costs this one index count
            missing.extend(_holes(tli, lo, hi, n))
        result.extend(Gap(tli, first, last, seg_size) for first, last in _merge(missing))
    return result


def _held_spans(spans: dict[int, tuple[int, int]], lost: set[tuple[int, int]]) -> dict[int, tuple[int, int]]:
    """Spans shrunk past rows at either end that are not held (e.g. old files deleted locally)."""
    result = {}
    for tli, (_lo, _hi) in spans.items():
        gone = sorted(segno for t, segno in lost if t == tli)
        held = WalSegment.objects.filter(timeline=tli).exclude(segno__in=gone).order_by()
        first = held.aggregate(lo=Min("segno"), hi=Max("segno"))
        if first["lo"] is not None:
            result[tli] = (first["lo"], first["hi"])
    return result


# Counting an index range is cheap; bisection finds a few holes in a few dozen counts.
# Past this many counts (many holes) one window-function query is cheaper.
BISECT_BUDGET = 64


def _holes(tli: int, lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    """Segno runs with no row inside [lo, hi], which holds ``n`` rows."""
    def count(a: int, b: int) -> int:
        return WalSegment.objects.filter(timeline=tli, segno__gte=a, segno__lte=b).order_by().count()

    holes: list[tuple[int, int]] = []
    todo = [(lo, hi, n)]
    queries = 0
    while todo:
        a, b, n = todo.pop()
        if n == b - a + 1:
            continue
        if n == 0:
            holes.append((a, b))
            continue
        if queries >= BISECT_BUDGET:
            return _holes_by_window(tli, lo, hi)
        mid = (a + b) // 2
        left = count(a, mid)
        queries += 1
        todo += [(a, mid, left), (mid + 1, b, n - left)]
    return holes


def _holes_by_window(tli: int, lo: int, hi: int) -> list[tuple[int, int]]:
    table = WalSegment._meta.db_table
    with connection.cursor() as cur:
        cur.execute(
            f"SELECT segno, nxt FROM (SELECT segno, LEAD(segno) OVER (ORDER BY segno) AS nxt FROM {table} "
            f"WHERE server_id = %s AND timeline = %s AND segno >= %s AND segno <= %s) AS s WHERE nxt > segno + 1",
            [servers.current_id(), tli, lo, hi])
        holes = [(segno + 1, nxt - 1) for segno, nxt in cur.fetchall()]
        cur.execute(f"SELECT min(segno), max(segno) FROM {table} WHERE server_id = %s AND timeline = %s "
                    f"AND segno >= %s AND segno <= %s", [servers.current_id(), tli, lo, hi])
        first, last = cur.fetchone()
    if first is None:
        return [(lo, hi)]
    if first > lo:
        holes.append((lo, first - 1))
    if last < hi:
        holes.append((last + 1, hi))
    return holes


def _merge(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for first, last in sorted(runs):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return merged


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


def recoverable_window(gap_list: list[Gap] | None = None,
                       lost: set[tuple[int, int]] | None = None) -> Window | None:
    """The moments a restore can reach now; None when there is nothing to restore from.

    ``gap_list`` and ``lost`` are gaps() and not_held() when the caller has them already.
    Every lookup walks an index from one end, so the cost does not grow with the catalog.
    """
    lost = not_held() if lost is None else lost
    gap_list = gaps(lost=lost) if gap_list is None else gap_list
    backup = (BaseBackup.objects.filter(state=JobState.DONE, manifest_verified=True, stop_lsn__isnull=False)
              .order_by("stop_lsn").first())
    with_commits = WalSegment.objects.filter(last_commit_at__isnull=False).order_by()
    if backup is not None:
        assert backup.stop_lsn is not None  # filtered on stop_lsn
        start, start_lsn, tli = backup.stop_time, backup.stop_lsn, backup.timeline
    else:
        spans = segment_spans()
        if not spans:
            return None
        start_lsn = min(lo for lo, _ in spans.values()) * segment_size()
        # The oldest commits are in the segments whose newest commit is oldest (index on last_commit_at);
        # a few rows cover commit times that are slightly out of LSN order.
        firsts = [f for f, key
                  in with_commits.order_by("last_commit_at").values_list("first_commit_at", "timeline")[:16]
                  if f is not None]
        if not firsts:
            return None
        start, tli = min(firsts), None
    gap = next((g for g in gap_list if g.end_lsn > start_lsn), None)
    newest = _newest_commit(start_lsn, gap, lost)
    if newest is None or (start is not None and newest[0] < start):
        end, end_lsn, end_tli = start, start_lsn, tli  # nothing committed after the backup yet: only its own end
    else:
        end, end_lsn, end_tli = newest
    return Window(start, start_lsn, end, end_lsn, end_tli or tli,
                  "base backup" if backup else "oldest segment",
                  backup.pk if backup else None, backup.label if backup else "", gap)


def _newest_commit(start_lsn: int, gap: Gap | None,
                   lost: set[tuple[int, int]]) -> tuple[datetime, int, int] | None:
    """(time, LSN, timeline) of the newest commit after start_lsn and before the gap, if any.

    Walks the (timeline, segno) index down from the newest segment of each
    timeline; a few rows cover commit times that are slightly out of LSN order.
    """
    for tli in sorted(segment_spans(), reverse=True):
        if gap is not None and tli > gap.timeline:
            continue
        rows = WalSegment.objects.filter(timeline=tli, last_commit_at__isnull=False, last_commit_lsn__gte=start_lsn)
        if gap is not None:
            rows = rows.filter(segno__lt=gap.first, end_lsn__lte=gap.start_lsn)
        top = [r for r in rows.order_by("-segno").values_list("last_commit_at", "last_commit_lsn", "segno")[:8]
               if (tli, r[2]) not in lost]
        if top:
            # filtered on last_commit_at (and so last_commit_lsn) being set
            return max(r[0] for r in top), top[0][1], tli  # type: ignore[type-var, return-value]
    return None


# --- one summary for walstatus, the dashboard and metrics -----------------------------------
def summary(with_fleet: bool = True) -> dict:
    """Segments per timeline, newest segment, partial, gaps, window and capturer lag."""
    timelines = {t.tli: t for t in Timeline.objects.all()}
    lost = not_held()
    seg_size = _segment_size_or_none()
    per_tli = []
    # Partials are few and is_partial is indexed: one small grouped query for all timelines.
    # (is_partial__in, not is_partial=True: SQLite gets "IN (1)", which uses the index; a bare column does not.)
    partials = {row["timeline"]: (row["n"], row["b"] or 0) for row in WalSegment.objects.filter(is_partial__in=[True])
                .order_by().values("timeline").annotate(n=Count("id"), b=Sum("size"))}
    for tli, (first, last) in segment_spans().items():
        rows = WalSegment.objects.filter(timeline=tli).order_by()
        partial_count, partial_bytes = partials.get(tli, (0, 0))
        count = rows.count()
        t = timelines.get(tli)
        per_tli.append({
            "timeline": tli, "segments": count, "complete": count - partial_count, "partial": partial_count,
            "lost": sum(1 for t_, _ in lost if t_ == tli), "first": first, "last": last,
            "bytes": (count - partial_count) * (seg_size or 0) + partial_bytes,
            "newest_commit": rows.filter(last_commit_at__isnull=False).aggregate(v=Max("last_commit_at"))["v"],
            "parent": t.parent_tli if t else None,
            "switch_lsn": t.switch_lsn_text if t and t.switch_lsn is not None else None,
        })
    segs = WalSegment.objects.order_by()
    # Walk the (timeline, segno) index from the top: the newest complete segment is right below the partial.
    newest = next((seg for seg in segs.order_by("-timeline", "-segno")[:4] if not seg.is_partial), None) \
        or segs.filter(is_partial=False).order_by("-timeline", "-segno").first()
    partial = segs.filter(is_partial__in=[True]).order_by("-timeline", "-segno").first()
    gap_list = gaps(lost=lost)
    window = recoverable_window(gap_list, lost)
    result = {
        "segment_size": seg_size,
        "segments": sum(r["segments"] for r in per_tli),
        "timelines": per_tli,
        "newest_segment": _segment_dict(newest),
        "partial": _segment_dict(partial),
        "gaps": [g.as_dict() for g in gap_list],
        "window": window.as_dict() if window else None,
        "corrupt": corrupt_segments(),
        # The growing partial is re-indexed on every pass that sees it change.
        "last_indexed_at": max((s.indexed_at for s in (newest, partial) if s), default=None),
    }
    if with_fleet:
        result["capturer"] = capture_summary()
    return result


def corrupt_segments(limit: int = 20) -> dict:
    """Complete segments whose local content no longer matches the cataloged sha256."""
    rows = WalSegment.objects.filter(corrupt_at__isnull=False).order_by("timeline", "segno")
    return {"count": rows.count(),
            "segments": [{"name": s.name, "corrupt_at": s.corrupt_at, "detail": s.corrupt_detail}
                         for s in rows[:limit]]}


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
