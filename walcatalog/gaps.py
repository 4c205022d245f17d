"""Gaps: segments a timeline's WAL should have between its first and last, that no good copy holds.

Asked every few seconds of a catalog that may hold 100k segments: min/max probes of the
(timeline, segno) index and counts, bisecting only around a hole.
"""
from __future__ import annotations

from dataclasses import dataclass

from django.db import connection
from django.db.models import Exists, Max, Min, OuterRef, Q

from fleet import servers
from walcatalog import walnames
from walcatalog.models import StorageCopy, Timeline, WalSegment
from walcatalog.segsize import segment_size


def timelines_held() -> list[int]:
    """Timelines with segment rows: a loose index scan, a few index probes whatever the row count."""
    found: list[int] = []
    rows = WalSegment.objects.order_by()
    while (tli := rows.filter(timeline__gt=found[-1] if found else -1).aggregate(t=Min("timeline"))["t"]) is not None:
        found.append(tli)
    return found


def held() -> Q:
    """Rows with a good copy: an uncorrupted local file, or a verified storage copy (what the planner may use).
    A .partial snapshot holds a row only while it is partial: a completed segment needs its complete copy."""
    copies = StorageCopy.verified().filter(segment=OuterRef("pk"))
    return Q(Q(in_local_archive=True, corrupt_at__isnull=True)
             | Exists(copies.exclude(kind=StorageCopy.Kind.PARTIAL))
             | Q(is_partial=True) & Exists(copies.filter(kind=StorageCopy.Kind.PARTIAL)))


def segment_spans() -> dict[int, tuple[int, int]]:
    """(lowest, highest) segno per timeline; each a single min/max probe of the (timeline, segno) index."""
    spans = {}
    for tli in timelines_held():
        rows = WalSegment.objects.filter(timeline=tli).order_by()
        spans[tli] = (rows.aggregate(v=Min("segno"))["v"], rows.aggregate(v=Max("segno"))["v"])
    return spans


def not_held() -> set[tuple[int, int]]:
    """(timeline, segno) of rows with no good copy: gone or corrupt locally, and no verified storage copy.

    The negation of held(), spelled so that SQLite uses the index; walstatus and the planner agree on gaps.
    """
    copies = StorageCopy.verified().filter(segment=OuterRef("pk"))
    # in_local_archive__in=[False]: SQLite gets "IN (0)", which uses the index; "NOT column" would scan.
    bad = Q(in_local_archive__in=[False]) | Q(corrupt_at__isnull=False)
    snapshot = Q(is_partial=True) & Exists(copies.filter(kind=StorageCopy.Kind.PARTIAL))
    return set(WalSegment.objects.filter(bad).filter(~Exists(copies.exclude(kind=StorageCopy.Kind.PARTIAL)))
               .exclude(snapshot).values_list("timeline", "segno"))


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
