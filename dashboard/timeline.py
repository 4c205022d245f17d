"""The WAL timeline picture: segments per timeline over time, as inline SVG.

The catalog may hold 100k segments and more, so nothing here touches one row
per segment in Python: the database groups segments into BUCKETS time buckets
per timeline and the picture draws one bar per non-empty bucket. A segment's
time is its newest commit, or when it was indexed if it holds no commit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone
from html import escape

from django.db import connection

from walcatalog.models import BaseBackup, WalSegment

BUCKETS = 200
WIDTH, LANE, TOP, LEFT, RIGHT, AXIS = 960, 46, 22, 64, 16, 34
MAX_BACKUP_MARKS = 200
MAX_GAP_MARKS = 100


def _epoch_sql(column: str) -> str:
    """Seconds since 1970 of a datetime column, in this database's dialect."""
    if connection.vendor == "sqlite":  # Django stores UTC text there
        return f"((julianday({column}) - 2440587.5) * 86400.0)"
    if connection.vendor == "postgresql":
        return f"EXTRACT(EPOCH FROM {column})"
    raise NotImplementedError(f"timeline picture: database {connection.vendor} is not supported")


@dataclass
class Bucket:
    timeline: int
    index: int
    segments: int
    bytes: int
    commits: int
    first_segno: int
    last_segno: int


@dataclass
class Picture:
    start: float | None = None  # unix seconds
    end: float | None = None
    timelines: list[int] = field(default_factory=list)
    buckets: list[Bucket] = field(default_factory=list)
    total_segments: int = 0

    @property
    def empty(self) -> bool:
        return self.start is None


def aggregate(buckets: int = BUCKETS) -> Picture:
    """Two queries: the time range, then segment counts per (timeline, bucket)."""
    table = WalSegment._meta.db_table
    t = _epoch_sql("COALESCE(last_commit_at, indexed_at)")
    with connection.cursor() as cur:
        cur.execute(f"SELECT MIN({t}), MAX({t}), COUNT(*) FROM {table}")
        start, end, total = cur.fetchone()
        if not total:
            return Picture()
        start, end = float(start), float(end)
        span = max(end - start, 1.0)
        cur.execute(
            f"SELECT timeline, CAST((({t}) - %s) * %s / %s AS INTEGER) AS b, COUNT(*), SUM(size),"
            f" SUM(commit_count), MIN(segno), MAX(segno)"
            f" FROM {table} GROUP BY timeline, b ORDER BY timeline, b",
            [start, buckets, span * (1 + 1e-9)],
        )
        rows = cur.fetchall()
    found = [Bucket(int(r[0]), min(int(r[1]), buckets - 1), int(r[2]), int(r[3] or 0), int(r[4] or 0),
                    int(r[5]), int(r[6])) for r in rows]
    return Picture(start=start, end=start + span, timelines=sorted({b.timeline for b in found}),
                   buckets=found, total_segments=int(total))


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value else None


def _segment_time(timeline: int, segno: int) -> float | None:
    seg = WalSegment.objects.filter(timeline=timeline, segno=segno).values("last_commit_at", "indexed_at").first()
    return _epoch(seg["last_commit_at"] or seg["indexed_at"]) if seg else None


def _label(ts: float, span: float) -> str:
    moment = datetime.fromtimestamp(ts, dt_timezone.utc)
    return moment.strftime("%H:%M:%S" if span < 86400 else "%m-%d %H:%M") if span < 86400 * 60 else moment.strftime("%Y-%m-%d")


def render_svg(picture: Picture, gaps: list[dict], window: tuple[datetime | None, datetime | None],
               buckets: int = BUCKETS) -> str:
    """The picture as an SVG string; gaps are dicts with timeline, first and last missing segno."""
    if picture.empty:
        return '<p class="muted">No WAL segment is in the catalog yet.</p>'
    lanes = {tli: i for i, tli in enumerate(picture.timelines)}
    height = TOP + LANE * len(lanes) + AXIS
    plot_w = WIDTH - LEFT - RIGHT
    span = picture.end - picture.start

    def x(ts: float) -> float:
        return LEFT + plot_w * min(max((ts - picture.start) / span, 0.0), 1.0)

    out = [f'<svg class="timeline" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
           f'aria-label="WAL segments per timeline over time" xmlns="http://www.w3.org/2000/svg">']
    w_start, w_end = (_epoch(v) for v in window)
    if w_start is not None and w_end is not None and w_end >= picture.start and w_start <= picture.end:
        x0, x1 = x(w_start), x(w_end)
        out.append(f'<rect class="window" x="{x0:.1f}" y="{TOP - 6}" width="{max(x1 - x0, 2):.1f}" '
                   f'height="{LANE * len(lanes) + 6}"><title>recoverable window</title></rect>')
    peak = max(b.segments for b in picture.buckets)
    bar_w = max(plot_w / buckets, 1.0)
    for tli, lane in lanes.items():
        y = TOP + lane * LANE
        out.append(f'<text class="lane" x="{LEFT - 8}" y="{y + LANE / 2 + 4:.0f}" text-anchor="end">TL {tli}</text>')
        out.append(f'<line class="lane" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y + LANE - 6}" y2="{y + LANE - 6}"/>')
    for b in picture.buckets:
        y = TOP + lanes[b.timeline] * LANE
        h = max(3.0, (LANE - 12) * b.segments / peak)
        bx = LEFT + plot_w * b.index / buckets
        out.append(f'<rect class="seg" x="{bx:.1f}" y="{y + LANE - 6 - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
                   f'<title>timeline {b.timeline}: {b.segments} segments ({b.first_segno}..{b.last_segno}), '
                   f'{b.commits} commits, {b.bytes / 1048576:.1f} MiB</title></rect>')
    for gap in gaps[:MAX_GAP_MARKS]:
        if gap["timeline"] not in lanes:
            continue
        ts = _segment_time(gap["timeline"], gap["first"] - 1) or _segment_time(gap["timeline"], gap["last"] + 1)
        if ts is None:
            continue
        gx, y = x(ts), TOP + lanes[gap["timeline"]] * LANE
        out.append(f'<line class="gap" x1="{gx:.1f}" x2="{gx:.1f}" y1="{y}" y2="{y + LANE - 6}"/>'
                   f'<circle class="gap" cx="{gx:.1f}" cy="{y + 4}" r="4"><title>gap on timeline {gap["timeline"]}: '
                   f'{escape(gap["text"])}</title></circle>')
    backups = (BaseBackup.objects.filter(stop_time__isnull=False).order_by("-stop_time")
               .values("pk", "label", "stop_time", "timeline", "state")[:MAX_BACKUP_MARKS])
    for backup in backups:
        ts = backup["stop_time"].timestamp()
        if not picture.start <= ts <= picture.end:
            continue
        bx = x(ts)
        out.append(f'<line class="backup backup-{backup["state"]}" x1="{bx:.1f}" x2="{bx:.1f}" y1="{TOP - 8}" '
                   f'y2="{TOP + LANE * len(lanes)}"><title>base backup {escape(backup["label"])} '
                   f'({backup["state"]}), ended {backup["stop_time"]:%Y-%m-%d %H:%M:%S}</title></line>'
                   f'<path class="backup backup-{backup["state"]}" d="M{bx - 4:.1f},{TOP - 14} h8 l-4,6 z"/>')
    axis_y = TOP + LANE * len(lanes) + 4
    for i in range(6):
        ts = picture.start + span * i / 5
        out.append(f'<line class="tick" x1="{x(ts):.1f}" x2="{x(ts):.1f}" y1="{axis_y}" y2="{axis_y + 5}"/>'
                   f'<text class="tick" x="{x(ts):.1f}" y="{axis_y + 18}" text-anchor="middle">{_label(ts, span)}</text>')
    out.append("</svg>")
    return "".join(out)


def legend() -> list[tuple[str, str]]:
    return [("seg", "segments (bar height: how many in that slice of time)"), ("window", "recoverable window"),
            ("backup", "base backup (end)"), ("gap", "gap: missing segments")]

