"""Questions asked of the WAL catalog: the recoverable window and the summary walstatus and the overview show.

Segment size (walcatalog.segsize) and gaps (walcatalog.gaps) are re-exported: callers ask the catalog.

The dashboard asks these every few seconds of a catalog that may hold 100k
segments, so everything here is an aggregate query; only the rows around a
hole are ever read one by one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Max, Sum

from fleet.status import capture_summary
from pitrsite.errors import PitrError
from pitrsite.jobs import JobState
from walcatalog import walnames
from walcatalog.gaps import Gap, gaps, not_held, segment_spans, timelines_held  # noqa: F401  (re-exported)
from walcatalog.models import BaseBackup, Timeline, WalSegment
from walcatalog.segsize import segment_size  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

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
