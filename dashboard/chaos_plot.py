"""A chaos run's writes over time as inline SVG, with the chaos actions and the restore targets marked."""
from __future__ import annotations

from datetime import datetime, timezone as dt_timezone
from html import escape

from django.utils import timezone

from dashboard.timefmt import display_time

WIDTH, HEIGHT, TOP, LEFT, RIGHT, BOTTOM = 960, 246, 26, 56, 16, 46
MAX_POINTS = 300


def _ts(value) -> float | None:
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def _binned(series: list, start: float, end: float) -> list[tuple[float, float]]:
    """Commits per second, summed into at most MAX_POINTS bins and shown as a per-second rate."""
    span = max(end - start, 1.0)
    bins = min(MAX_POINTS, max(1, int(span)))
    width = span / bins
    sums = [0.0] * bins
    for second, commits in series:
        sums[min(bins - 1, max(0, int((second - start) / width)))] += commits
    return [(start + width * (i + 0.5), total / width) for i, total in enumerate(sums)]


def _local(ts: float) -> datetime:
    return timezone.localtime(datetime.fromtimestamp(ts, dt_timezone.utc))


def _shown(ts: float) -> str:
    return display_time(datetime.fromtimestamp(ts, dt_timezone.utc), precise=True)


def verification_time(entry: dict) -> float | None:
    for key in ("moment", "restored_to"):
        if key in entry:
            return _ts(entry[key])
    return None


def render(series: list, events: list[dict], verifications: list[dict]) -> str:
    times = [float(s) for s, _ in series]
    marks = [t for e in events
             for t in (_ts(e.get("started_at")), _ts(e.get("recovered_at") or e.get("ended_at"))) if t]
    targets = [t for t in (verification_time(v) for v in verifications) if t]
    everything = times + marks + targets
    if not everything:
        return '<p class="muted">No write recorded yet.</p>'
    start, end = min(everything), max(everything)
    end = max(end, start + 1)
    # The line spans the seconds the series counts, never the marks past them: an action after the newest
    # saved second is not a fall to zero commits.
    points = _binned(series, min(times), max(times) + 1) if series else []
    peak = max((rate for _, rate in points), default=1.0) or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(ts: float) -> float:
        return LEFT + plot_w * (ts - start) / (end - start)

    def y(rate: float) -> float:
        return TOP + plot_h * (1 - rate / peak)

    out = [f'<svg class="timeline chaos" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
           f'aria-label="writes per second with chaos actions and restore targets" xmlns="http://www.w3.org/2000/svg">']
    for event in events:
        t0 = _ts(event.get("started_at"))
        if t0 is None:
            continue
        t1 = _ts(event.get("recovered_at") or event.get("ended_at"))
        label = escape(str(event.get("action", "?")))
        out.append(f'<rect class="action-span" x="{x(t0):.1f}" y="{TOP}" width="{max(x(t1 or t0) - x(t0), 1.5):.1f}" '
                   f'height="{plot_h}"><title>{label}: {_shown(t0)} → {_shown(t1) if t1 else "?"}</title></rect>'
                   f'<line class="action" x1="{x(t0):.1f}" x2="{x(t0):.1f}" y1="{TOP - 10}" y2="{TOP + plot_h}"/>'
                   f'<text class="action" x="{x(t0) + 2:.1f}" y="{TOP - 13}">{label}</text>')
    if points:
        coords = " ".join(f"{x(t):.1f},{y(rate):.1f}" for t, rate in points)
        out.append(f'<polyline class="writes" points="{coords}"/>')
    for entry in verifications:
        t = verification_time(entry)
        if t is None:
            continue
        ok = entry.get("ok")
        out.append(f'<line class="target target-{"ok" if ok else "bad"}" x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{TOP}" '
                   f'y2="{TOP + plot_h}"><title>restore target T = {_shown(t)}: '
                   f'{"exact" if ok else "FAILED" if ok is False else "pending"}</title></line>')
    out.append(f'<text class="tick" x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{peak:.0f}/s</text>'
               f'<text class="tick" x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">0</text>'
               f'<line class="lane" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>')
    day = None
    for i in range(6):  # the date on the first tick and wherever it changes, the zone once at the end
        ts = start + (end - start) * i / 5
        moment = _local(ts)
        label = moment.strftime("%H:%M:%S" if moment.date() == day else "%Y-%m-%d %H:%M:%S")
        day = moment.date()
        anchor = "start" if i == 0 else "end" if i == 5 else "middle"
        out.append(f'<text class="tick" x="{x(ts):.1f}" y="{HEIGHT - 22}" text-anchor="{anchor}">{label}</text>')
    out.append(f'<text class="tick zone" x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end">'
               f'times in {_local(end).tzname()}</text>')
    out.append("</svg>")
    return "".join(out)


def legend() -> list[tuple[str, str]]:
    return [("writes", "commits per second"), ("action", "chaos action (shaded until recovered)"),
            ("target", "restore target T (red when the restore was not exact)")]
