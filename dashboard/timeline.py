"""The WAL timeline picture: segments per timeline over time, as inline SVG.

The catalog may hold 100k segments and more, so nothing here touches one row
per segment in Python: one GROUP BY cuts each timeline's segment numbers into
BUCKETS runs and returns each run's size and time span; the picture draws one
bar per run where its commits happened (time on x), its height the WAL rate.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone
from html import escape
from typing import cast

from django.db import connection
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from fleet import servers
from walcatalog import walnames
from walcatalog.models import BaseBackup, WalSegment
from dashboard.timefmt import display_time

BUCKETS = 200
WIDTH, LANE, TOP, LEFT, RIGHT, AXIS = 960, 80, 26, 64, 16, 40
# A stretch with no WAL longer than this share of the picture is drawn as idle (nothing written, nothing lost).
IDLE_SHARE = 0.02
MAX_MARKS = 200
MAX_BACKUP_MARKS = 2000
BACKUP_MERGE_PX = 6
MAX_GAP_MARKS = 100


@dataclass
class Bucket:
    """Consecutive segments of one timeline (about 1/BUCKETS of it) and the time they span."""

    timeline: int
    index: int
    segments: int
    bytes: int
    commits: int
    first_segno: int
    last_segno: int
    start: float  # unix seconds
    end: float


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


def _seconds(value) -> float | None:
    """A datetime from a raw query (SQLite gives text, PostgreSQL a datetime) as unix seconds."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_datetime(value)
    if timezone.is_naive(value):
        value = value.replace(tzinfo=dt_timezone.utc)  # Django stores UTC
    return value.timestamp()


def aggregate(buckets: int = BUCKETS) -> Picture:
    """One GROUP BY: each timeline's segment numbers cut into `buckets` runs, with their time span.

    Bucketing by segment number is plain integer arithmetic in any database
    (no per-row date functions); each run is then drawn where its commits
    happened, so time stays on x.
    """
    table = WalSegment._meta.db_table
    sql = (
        f"SELECT s.timeline, (s.segno - r.lo) * %s / (r.hi - r.lo + 1) AS b, COUNT(*), SUM(s.size),"
        f" SUM(s.commit_count), MIN(s.segno), MAX(s.segno),"
        f" COALESCE(MIN(s.first_commit_at), MIN(s.last_commit_at), MIN(s.indexed_at)),"
        f" COALESCE(MAX(s.last_commit_at), MAX(s.indexed_at))"
        f" FROM {table} s JOIN (SELECT timeline, MIN(segno) AS lo, MAX(segno) AS hi FROM {table}"
        f" WHERE server_id = %s GROUP BY timeline) r"
        f" ON r.timeline = s.timeline WHERE s.server_id = %s GROUP BY s.timeline, b ORDER BY s.timeline, b")
    server_id = servers.current_id()
    with connection.cursor() as cur:
        cur.execute(sql, [buckets, server_id, server_id])
        rows = cur.fetchall()
    if not rows:
        return Picture()
    found = [Bucket(int(r[0]), int(r[1]), int(r[2]), int(r[3] or 0), int(r[4] or 0), int(r[5]), int(r[6]),
                    cast(float, _seconds(r[7])), cast(float, _seconds(r[8]))) for r in rows]  # COALESCE: never NULL
    start, end = min(b.start for b in found), max(b.end for b in found)
    return Picture(start=start, end=max(end, start + 1.0), timelines=sorted({b.timeline for b in found}),
                   buckets=found, total_segments=sum(b.segments for b in found))


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value else None


def _segment_time(timeline: int, segno: int) -> float | None:
    seg = WalSegment.objects.filter(timeline=timeline, segno=segno).values("last_commit_at", "indexed_at").first()
    return _epoch(seg["last_commit_at"] or seg["indexed_at"]) if seg else None


def _label(ts: float, span: float) -> str:
    """Axis and title times, always with the date; the zone is written once at the axis's end."""
    moment = timezone.localtime(datetime.fromtimestamp(ts, dt_timezone.utc))
    if span < 3600:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M") if span < 86400 * 60 else moment.strftime("%Y-%m-%d")


def render_svg(picture: Picture, gaps: list[dict], window: tuple[datetime | None, datetime | None]) -> str:
    """The picture as an SVG string; gaps are catalog Gap dicts (timeline, first, last, text)."""
    if picture.empty:
        return '<p class="muted">No WAL segment is in the catalog yet.</p>'
    assert picture.start is not None and picture.end is not None
    start, end = picture.start, picture.end
    lanes = {tli: i for i, tli in enumerate(picture.timelines)}
    height = TOP + LANE * len(lanes) + AXIS
    plot_w = WIDTH - LEFT - RIGHT
    span = end - start

    def x(ts: float) -> float:
        return LEFT + plot_w * min(max((ts - start) / span, 0.0), 1.0)

    # data-*: what dashboard.js needs to turn a click into a moment (zoom and pan change only the viewBox).
    out = [f'<svg class="timeline" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
           f'data-start="{start:.3f}" data-end="{end:.3f}" data-left="{LEFT}" data-plot-width="{plot_w}" '
           f'aria-label="WAL segments per timeline over time" xmlns="http://www.w3.org/2000/svg">']
    w_start, w_end = (_epoch(v) for v in window)
    if w_start is not None and w_end is not None and w_end >= start and w_start <= end:
        x0, x1 = x(w_start), x(w_end)
        out.append(f'<rect class="window" x="{x0:.1f}" y="{TOP - 6}" width="{max(x1 - x0, 2):.1f}" '
                   f'height="{LANE * len(lanes) + 6}"><title>recoverable window</title></rect>')
    for tli, lane in lanes.items():
        y = TOP + lane * LANE
        out.append(f'<text class="lane" x="{LEFT - 8}" y="{y + LANE / 2 + 4:.0f}" text-anchor="end">TL {tli}</text>'
                   f'<line class="lane" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y + LANE - 6}" y2="{y + LANE - 6}"/>')
    # Bar height: segments per second of the run (the WAL rate), relative to the busiest run.
    rates = [b.segments / max(b.end - b.start, 1.0) for b in picture.buckets]
    peak = max(rates)
    for b, rate in zip(picture.buckets, rates, strict=True):
        y = TOP + lanes[b.timeline] * LANE
        h = max(4.0, (LANE - 12) * (rate / peak) ** 0.5)  # square root: quiet periods stay visible
        bx = x(b.start)
        out.append(f'<rect class="seg" x="{bx:.1f}" y="{y + LANE - 6 - h:.1f}" width="{max(x(b.end) - bx, 1.5):.1f}" '
                   f'height="{h:.1f}"><title>timeline {b.timeline}: {b.segments} segments ({b.first_segno}..'
                   f'{b.last_segno}), {b.commits} commits, {b.bytes / 1048576:.1f} MiB, '
                   f'{_label(b.start, 0)} .. {_label(b.end, 0)}</title></rect>')
    for gap in gaps[:MAX_GAP_MARKS]:
        if gap["timeline"] not in lanes:
            continue
        ts = _segment_time(gap["timeline"], gap["first"] - 1) or _segment_time(gap["timeline"], gap["last"] + 1)
        if ts is None:
            continue
        gx, y = x(ts), TOP + lanes[gap["timeline"]] * LANE
        out.append(f'<line class="gap" x1="{gx:.1f}" x2="{gx:.1f}" y1="{y}" y2="{y + LANE - 6}"/>'
                   f'<circle class="gap" cx="{gx:.1f}" cy="{y + 4}" r="4"><title>gap on {escape(gap["text"])}'
                   f'</title></circle>')
    out.extend(_idle_marks(picture, x, lanes))
    out.extend(_backup_marks(picture, x, lanes))
    out.extend(_moment_marks(picture, x, lanes))
    axis_y = TOP + LANE * len(lanes) + 4
    day = None
    for i in range(6):
        ts = start + span * i / 5
        anchor = "start" if i == 0 else "end" if i == 5 else "middle"  # the outer labels stay inside the picture
        label = _label(ts, span)
        date, _, clock = label.partition(" ")
        if date == day and clock:  # the date on the first tick and wherever it changes: labels must not overlap
            label = clock
        day = date
        out.append(f'<line class="tick" x1="{x(ts):.1f}" x2="{x(ts):.1f}" y1="{axis_y}" y2="{axis_y + 5}"/>'
                   f'<text class="tick" x="{x(ts):.1f}" y="{axis_y + 18}" text-anchor="{anchor}">{label}</text>')
    zone = timezone.localtime(datetime.fromtimestamp(end, dt_timezone.utc)).tzname()
    out.append(f'<text class="tick zone" x="{WIDTH - RIGHT}" y="{axis_y + 34}" text-anchor="end">times in {zone}; '
               f'wheel to zoom, drag to pan, click a moment to restore to it</text>')
    out.append("</svg>")
    return "".join(out)


def _idle_marks(picture: Picture, x, lanes: dict) -> list[str]:
    """Stretches of a timeline with no WAL: the server wrote nothing (not a gap: no segment is missing)."""
    assert picture.start is not None and picture.end is not None
    least = (picture.end - picture.start) * IDLE_SHARE
    out = []
    for tli, lane in lanes.items():
        runs = sorted((b for b in picture.buckets if b.timeline == tli), key=lambda b: b.start)
        for before, after in zip(runs, runs[1:], strict=False):
            if after.start - before.end > least:
                x0, x1 = x(before.end), x(after.start)
                y = TOP + lane * LANE
                out.append(f'<rect class="idle" x="{x0:.1f}" y="{y + LANE - 14}" width="{x1 - x0:.1f}" height="8">'
                           f'<title>idle: no WAL written {_label(before.end, 0)} .. {_label(after.start, 0)} '
                           f'(nothing missing)</title></rect>')
    return out


def _moment_marks(picture: Picture, x, lanes: dict) -> list[str]:
    """Named restore points (diamonds) and where restores went (circles on the lane's top)."""
    from restores.models import RestoreJob, TargetKind
    from walcatalog.models import RestorePoint

    out = []
    points = RestorePoint.objects.select_related("segment").order_by("-lsn")[:MAX_MARKS]
    for point in points:
        at = (point.segment.last_commit_at or point.segment.indexed_at) if point.segment else None
        if at is None or point.timeline not in lanes:
            continue
        px, y = x(at.timestamp()), TOP + lanes[point.timeline] * LANE + 8
        out.append(f'<path class="restore-point" d="M{px:.1f},{y - 5} l5,5 l-5,5 l-5,-5 z"><title>restore point '
                   f'{escape(point.name)} (LSN {walnames.format_lsn(point.lsn)})</title></path>')
    restores = RestoreJob.objects.filter(target_kind=TargetKind.TIME, state="done").order_by("-created_at")
    for job in restores[:MAX_MARKS]:
        try:
            at = datetime.fromisoformat(job.target_value)
        except ValueError:
            continue
        out.append(f'<circle class="restore" cx="{x(at.timestamp()):.1f}" cy="{TOP + 4}" r="4">'
                   f'<title>restore #{job.pk} to {display_time(at, precise=bool(at.microsecond))}</title></circle>')
    return out


def _backup_marks(picture: Picture, x, lanes: dict) -> list[str]:
    """One mark per backup; backups closer than a few pixels share one mark (its title says how many)."""
    assert picture.start is not None and picture.end is not None  # render_svg draws a non-empty picture
    rows = (BaseBackup.objects.filter(stop_time__gte=datetime.fromtimestamp(picture.start, dt_timezone.utc),
                                      stop_time__lte=datetime.fromtimestamp(picture.end, dt_timezone.utc))
            .order_by("-stop_time").values("label", "stop_time", "state")[:MAX_BACKUP_MARKS])
    groups: dict[int, list[dict]] = {}
    for backup in rows:
        stop_time = backup["stop_time"]
        assert stop_time is not None  # filtered on stop_time
        groups.setdefault(round(x(stop_time.timestamp()) / BACKUP_MERGE_PX), []).append(dict(backup))
    full_lines = len(groups) <= 40  # many marks: triangles only, lines would hide the segments
    out = []
    for members in groups.values():
        newest = members[0]
        bx = x(newest["stop_time"].timestamp())
        state = "done" if any(m["state"] == "done" for m in members) else newest["state"]
        title = (f"base backup {escape(newest['label'])} ({newest['state']}), "
                 f"ended {_label(newest['stop_time'].timestamp(), 0)}"
                 if len(members) == 1 else f"{len(members)} base backups, newest {escape(newest['label'])}")
        if full_lines:
            out.append(f'<line class="backup backup-{state}" x1="{bx:.1f}" x2="{bx:.1f}" y1="{TOP - 8}" '
                       f'y2="{TOP + LANE * len(lanes)}"/>')
        out.append(f'<path class="backup backup-{state}" d="M{bx - 4:.1f},{TOP - 14} h8 l-4,6 z">'
                   f'<title>{title}</title></path>')
    return out


def legend() -> list[tuple[str, str]]:
    return [("seg", "WAL segments (bar height: WAL rate in that run)"), ("window", "recoverable window"),
            ("backup", "base backup (end)"), ("gap", "gap: missing segments"),
            ("idle", "idle: no WAL written, nothing missing"), ("restore-point", "named restore point"),
            ("restore", "a restore to that time")]
