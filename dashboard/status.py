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

from pitrsite.jobs import JobState
from walcatalog.models import BaseBackup, WalSegment
from dashboard import jobs


@dataclass
class Overview:
    capture: dict[str, Any] = field(default_factory=dict)
    newest: dict[int, dict] = field(default_factory=dict)  # timeline -> newest complete segment
    partial: dict | None = None
    segments: int = 0
    gaps: list[dict] = field(default_factory=list)  # walcatalog.catalog.Gap.as_dict()
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
    from walcatalog import catalog

    facts = catalog.summary(with_fleet=with_capture)
    view = Overview(segments=facts["segments"], partial=facts["partial"], gaps=facts["gaps"])
    if with_capture:
        view.capture = facts["capturer"]
        view.capture["running"] = view.capture.get("state") == "running" and bool(view.capture.get("streaming"))
        view.problems.extend(view.capture.get("errors", []))
    window = facts["window"]
    if window:
        view.window_start, view.window_end = window["start"], window["end"]
        view.window_text = window["description"]
    else:
        view.window_text = "nothing to restore from: no verified base backup and no commit captured"
    view.newest = newest_segments()
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
        "partial": view.partial and {"name": view.partial["name"], "size": view.partial["size"],
                                     "captured_to": view.partial["captured_to"]},
        "segments": view.segments, "gaps": view.gaps,
        "window": {"start": view.window_start and view.window_start.isoformat(),
                   "end": view.window_end and view.window_end.isoformat(), "text": view.window_text},
        "last_backup": view.last_backup and {"id": view.last_backup.pk, "label": view.last_backup.label,
                                             "age_seconds": view.last_backup_age},
        "storage": view.storage, "running": view.running,
        "job_counts": view.job_counts, "problems": view.problems,
    }
