"""What the overview and /metrics say: one function gathers it, both show it.

Catalog facts (gaps, recoverable window, newest segment) come from
walcatalog.catalog, the capture state from the fleet, job facts from the job
rows. A part that cannot be read (primary down) becomes a line in `problems`,
never an error page: the overview is what a user opens when things are wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from pitrsite.errors import PitrError
from pitrsite.jobs import JobState
from walcatalog.models import BaseBackup, WalSegment
from dashboard import jobs


@dataclass
class Gap:
    timeline: int
    first: int  # first missing segment number
    last: int   # last missing segment number
    text: str

    def as_dict(self) -> dict:
        return {"timeline": self.timeline, "first": self.first, "last": self.last, "text": self.text}


@dataclass
class Overview:
    capture: dict[str, Any] = field(default_factory=dict)
    newest: dict[int, dict] = field(default_factory=dict)  # timeline -> newest complete segment
    partial: dict | None = None
    segments: int = 0
    gaps: list[Gap] = field(default_factory=list)
    window_start: datetime | None = None
    window_end: datetime | None = None
    window_text: str = ""
    last_backup: BaseBackup | None = None
    last_backup_age: float | None = None
    storage: list[str] = field(default_factory=list)
    running: list = field(default_factory=list)
    job_counts: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def protected(self) -> bool:
        return bool(self.capture.get("running")) and not self.gaps and self.window_start is not None


def _field(obj: Any, *names: str) -> Any:
    for name in names:
        if isinstance(obj, dict) and name in obj:
            return obj[name]
        if hasattr(obj, name):
            return getattr(obj, name)
    return None


def catalog_gaps() -> list[Gap]:
    from walcatalog import catalog

    result = []
    for gap in catalog.gaps():
        timeline = int(_field(gap, "timeline", "tli"))
        first = int(_field(gap, "first", "first_missing", "start_segno", "from_segno"))
        last = int(_field(gap, "last", "last_missing", "end_segno", "to_segno"))
        text = _field(gap, "text", "message") or (f"timeline {timeline}: segments {first}..{last} missing"
                                                    if last != first else f"timeline {timeline}: segment {first} missing")
        result.append(Gap(timeline, first, last, str(text)))
    return result


def catalog_window() -> tuple[datetime | None, datetime | None, str]:
    """(start, end, why-not text) of the recoverable window."""
    from walcatalog import catalog

    try:
        window = catalog.recoverable_window()
    except PitrError as exc:
        return None, None, str(exc)
    if window is None:
        return None, None, "no verified base backup yet"
    start = _field(window, "start", "start_time", "from_time", "earliest")
    end = _field(window, "end", "end_time", "to_time", "latest")
    return start, end, ""


def capture_state() -> dict[str, Any]:
    from fleet.status import fleet_status

    status = fleet_status()
    role = status["roles"]["capturer"]
    capturer = status.get("capturer") or {}
    return {
        "state": role["state"], "running": role["state"] == "running" and bool(capturer.get("streaming")),
        "streaming": capturer.get("streaming"), "lag_bytes": capturer.get("lag_bytes"),
        "lag_seconds": capturer.get("lag_seconds"), "restarts": role.get("restarts"),
        "primary": status["roles"]["primary"]["state"], "primary_lsn": status.get("primary_lsn"),
        "errors": status.get("errors", []),
    }


def storage_lines() -> list[str]:
    lines = [f"local archive: filesystem {settings.PITR_WAL_ARCHIVE}"]
    archive = settings.STORAGES.get("archive")
    if archive:
        lines.append(f"archive storage: {archive.get('BACKEND', '?').rsplit('.', 1)[-1]}")
    return lines


def newest_segments() -> dict[int, dict]:
    rows = (WalSegment.objects.filter(is_partial=False).order_by("timeline", "-segno")
            .values("timeline", "segno", "name", "last_commit_at"))
    result: dict[int, dict] = {}
    for timeline in WalSegment.objects.order_by().values_list("timeline", flat=True).distinct():
        row = rows.filter(timeline=timeline).first()
        if row:
            result[timeline] = row
    return result


def overview(with_capture: bool = True) -> Overview:
    view = Overview()
    if with_capture:
        try:
            view.capture = capture_state()
        except PitrError as exc:
            view.capture = {"state": "unknown", "running": False}
            view.problems.append(str(exc))
        view.problems.extend(view.capture.get("errors", []))
    view.newest = newest_segments()
    view.partial = (WalSegment.objects.filter(is_partial=True).order_by("-timeline", "-segno")
                    .values("name", "size", "timeline", "last_commit_at").first())
    view.segments = WalSegment.objects.count()
    view.gaps = catalog_gaps()
    view.window_start, view.window_end, view.window_text = catalog_window()
    view.last_backup = BaseBackup.objects.filter(state=JobState.DONE).order_by("-finished_at").first()
    if view.last_backup:
        moment = view.last_backup.stop_time or view.last_backup.finished_at
        view.last_backup_age = (timezone.now() - moment).total_seconds() if moment else None
    view.storage = storage_lines()
    view.running = [jobs.job_json(job) for job in jobs.running_jobs()]
    view.job_counts = jobs.counts_by_state()
    return view


def overview_json(view: Overview) -> dict:
    return {
        "protected": view.protected, "capture": {k: v for k, v in view.capture.items() if k != "errors"},
        "newest": {str(t): row["name"] for t, row in view.newest.items()},
        "partial": view.partial and {"name": view.partial["name"], "size": view.partial["size"]},
        "segments": view.segments, "gaps": [g.as_dict() for g in view.gaps],
        "window": {"start": view.window_start and view.window_start.isoformat(),
                   "end": view.window_end and view.window_end.isoformat(), "why_not": view.window_text},
        "last_backup": view.last_backup and {"id": view.last_backup.pk, "label": view.last_backup.label,
                                             "age_seconds": view.last_backup_age},
        "storage": view.storage, "running": view.running,
        "job_counts": view.job_counts, "problems": view.problems,
    }
