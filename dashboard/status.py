"""What the overview and /metrics say: one function gathers it, both show it.

Catalog facts (gaps, recoverable window, newest segment) come from
walcatalog.catalog, the capture state from the fleet, job facts from the job
rows. A part that cannot be read (primary down) becomes a line in `problems`,
never an error page: the overview is what a user opens when things are wrong.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, Max, Min, Q, Sum
from django.utils import timezone

from dashboard import jobs
from dashboard.templatetags.pitr import seconds, when
from dashboard.timefmt import display_time
from fleet import servers
from fleet.layout import Layout
from fleet.status import capture_summary
from pitrsite import periodic
from pitrsite.jobs import JobState
from walcatalog import catalog
from walcatalog.models import BaseBackup, StorageCopy, Timeline, WalSegment

# The fingerprint decides freshness; the clock only catches what it cannot see cheaply
# (retention clearing in_local_archive on old segments).
CACHE_SECONDS = 30


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
    drill: dict = field(default_factory=dict)  # restores.drill.summary()
    tasks: list = field(default_factory=list)  # pitrsite.periodic.states(): each beat task's last outcome
    corrupt: int = 0  # complete WAL segments whose content changed after indexing
    backup_schedule: str = ""  # PITR_BACKUP_SCHEDULE (cron) or "disable"
    next_backup: datetime | None = None
    backup_too_old: bool = False
    storage_bytes: dict[str, int] = field(default_factory=dict)  # place -> bytes held there
    upload_backlog: int | None = None  # complete segments not in the archive storage yet
    target: dict = field(default_factory=dict)  # dashboard.target.facts(): what the restore target holds

    @property
    def protected(self) -> bool:
        return (bool(self.capture.get("running")) and not self.gaps and not self.corrupt
                and self.window_start is not None)


def storage_lines(waiting: int | None) -> list[str]:
    """Where copies go and how far uploads got (asked once per catalog state); `waiting` is upload_backlog()."""
    lines = [f"local archive: filesystem {Layout.current().archive}"]
    if "archive" not in settings.STORAGES:
        return lines
    from walcatalog.storage import describe, identity
    from walcatalog.uploader import storage_recovery_point

    lines.append(f"archive storage: {describe('archive')}")
    copies = StorageCopy.objects.filter(storage=identity("archive")).order_by()
    counts = dict(copies.values_list("kind").annotate(n=Count("id")))
    newest = copies.aggregate(at=Max("uploaded_at"))["at"]
    lines.append(f"copies: {counts.get('wal', 0)} WAL segments, {counts.get('backup', 0)} backup files"
                 + (f", newest uploaded {display_time(newest)}" if newest else ""))
    lines.append(f"complete segments not uploaded yet: {waiting}")
    point = storage_recovery_point("archive")
    # A timestamp, not an age: these lines are cached per catalog state (the age is in /metrics).
    lines.append("newest commit held in storage: " + (
        f"{display_time(point, precise=True)} (later commits are only on this machine)" if point else "none yet"))
    return lines


def storage_bytes() -> dict[str, int]:
    """Bytes in the local archive, the local backups and each storage, from the catalog (one SUM each)."""
    segs = WalSegment.objects.order_by().filter(in_local_archive=True).aggregate(n=Sum("size"))["n"] or 0
    local_backups = BaseBackup.objects.order_by().exclude(path="").aggregate(n=Sum("size_stored"))["n"] or 0
    result = {"local archive": segs, "local backups": local_backups}
    for storage, total in StorageCopy.objects.order_by().values_list("storage").annotate(n=Sum("size")):
        result[f"storage {storage}"] = total or 0
    return result


def upload_backlog() -> int | None:
    if "archive" not in settings.STORAGES:
        return None
    from walcatalog.uploader import wal_to_upload

    return wal_to_upload("archive").count()


def backup_schedule(view: Overview) -> None:
    """The scheduled backups' next run, and the age alert past PITR_BACKUP_MAX_AGE."""
    from pitrsite.celery import backup_crontab

    view.backup_schedule = settings.PITR_BACKUP_SCHEDULE
    cron = backup_crontab()
    if cron is not None:
        now = timezone.now()
        # Cron runs on whole minutes; the estimate drops the microseconds of now.
        view.next_backup = (now + cron.remaining_estimate(now) + timedelta(seconds=30)).replace(second=0,
                                                                                               microsecond=0)
    limit = settings.PITR_BACKUP_MAX_AGE
    if limit and view.last_backup_age is not None and view.last_backup_age > limit:
        view.backup_too_old = True
        view.problems.append(f"the newest base backup ended {seconds(view.last_backup_age)} ago, more than "
                             f"PITR_BACKUP_MAX_AGE ({seconds(limit)}): take one, or check the backup schedule")


def newest_segments() -> dict[int, dict]:
    rows = (WalSegment.objects.filter(is_partial=False).order_by("timeline", "-segno")
            .values("timeline", "segno", "name", "last_commit_at"))
    result: dict[int, dict] = {}
    for timeline in catalog.timelines_held():
        row = rows.filter(timeline=timeline).first()
        if row:
            result[timeline] = dict(row)
    return result


def fingerprint() -> str:
    """Changes whenever what catalog.summary() reports can change; a few index-only queries.

    Segments: count, newest id, commit-time bounds (indexed) and the partial
    row (it grows in place). Backups and storage copies: count, newest id and
    the states that decide the window. Timelines: count. The cache key, so the
    expensive catalog questions are asked once per catalog state.
    """
    segs = WalSegment.objects.order_by()
    # One aggregate per query: SQLite answers a lone MIN/MAX from an index, a combined one by scanning.
    seg = [segs.count()] + [segs.aggregate(v=agg)["v"]
                            for agg in (Max("id"), Min("last_commit_at"), Max("last_commit_at"))]
    # `is_partial IN (1)` uses the index; SQLite does not for a bare `WHERE is_partial`.
    partial = list(segs.filter(is_partial__in=[True]).values_list("id", "size", "scanned_to"))
    backups = BaseBackup.objects.order_by().aggregate(
        n=Count("id"), top=Max("id"), good=Count("id", filter=Q(state=JobState.DONE, manifest_verified=True)),
        ended=Max("stop_lsn"))
    copies = StorageCopy.objects.order_by().aggregate(n=Count("id"), top=Max("id"))
    # The server first: two servers' catalogs can hold the same counts and ids' shapes.
    facts = (servers.current_id(), seg, partial, backups, copies, Timeline.objects.count())
    return hashlib.sha1(repr(facts).encode()).hexdigest()


def cached(name: str, key: str, compute: Callable[[], Any]) -> Any:
    """compute() once per catalog state: the indexer changes it every few seconds at most, pages poll faster."""
    full = f"pitr-dashboard:{name}:{key}"
    value = cache.get(full)
    if value is None:
        value = compute()
        cache.set(full, value, CACHE_SECONDS)
    return value


def catalog_summary(key: str | None = None) -> dict:
    from walcatalog import catalog

    return cached("summary", key or fingerprint(), lambda: catalog.summary(with_fleet=False))


def overview(with_capture: bool = True, key: str | None = None) -> Overview:
    key = key or fingerprint()
    facts = catalog_summary(key)
    view = Overview(segments=facts["segments"], partial=facts["partial"], gaps=facts["gaps"])
    view.corrupt = facts.get("corrupt", {}).get("count", 0)
    if view.corrupt:
        view.problems.append(f"{view.corrupt} WAL segment(s) corrupt in the local archive (see walstatus)")
    if with_capture:
        view.capture = capture_summary()
        view.capture["running"] = view.capture.get("state") == "running" and bool(view.capture.get("streaming"))
        view.problems.extend(view.capture.get("errors", []))
        if view.capture.get("reason"):
            view.problems.append(view.capture["reason"])
        view.target = target_facts()
        if view.target.get("note") and view.target.get("state") in ("recovering", "promoted"):
            view.problems.append(f"restore target: {view.target['note']}")
    window = facts["window"]
    if window:
        view.window_start, view.window_end = window["start"], window["end"]
        view.window_text = window["description"]
    else:
        view.window_text = "nothing to restore from: no verified base backup and no commit captured"
    view.newest = cached("newest", key, newest_segments)
    view.last_backup = BaseBackup.objects.filter(state=JobState.DONE).order_by("-finished_at").first()
    if view.last_backup:
        moment = view.last_backup.stop_time or view.last_backup.finished_at
        view.last_backup_age = (timezone.now() - moment).total_seconds() if moment else None
    view.upload_backlog = cached("upload-backlog", key, upload_backlog)  # an anti-join: once per catalog state
    view.storage = cached("storage", key, lambda: storage_lines(view.upload_backlog))
    view.storage_bytes = cached("storage-bytes", key, storage_bytes)
    backup_schedule(view)
    view.running = [jobs.job_json(job) for job in jobs.running_jobs()]
    view.job_counts = jobs.counts_by_state()
    view.drill = drill_summary()
    if view.drill["warning"]:
        view.problems.append(view.drill["warning"])
    view.tasks = periodic.states(servers.current().name)
    view.problems.extend(f"periodic task {t['task']} failing since {when(t['last_error_at'])}: "
                         f"{t['last_error']}" for t in view.tasks if t["failing"])
    return view


def target_facts() -> dict:
    from dashboard.target import facts

    return facts()


def drill_summary() -> dict:
    from restores.drill import summary

    return summary()


def overview_json(view: Overview) -> dict:
    return {
        "protected": view.protected, "capture": {k: v for k, v in view.capture.items() if k != "errors"},
        "newest": {str(t): row["name"] for t, row in view.newest.items()},
        "partial": view.partial and {"name": view.partial["name"], "size": view.partial["size"],
                                     "captured_to": view.partial["captured_to"]},
        "segments": view.segments, "gaps": view.gaps, "corrupt": view.corrupt,
        "window": {"start": view.window_start and view.window_start.isoformat(),
                   "end": view.window_end and view.window_end.isoformat(), "text": view.window_text},
        "last_backup": view.last_backup and {"id": view.last_backup.pk, "label": view.last_backup.label,
                                             "age_seconds": view.last_backup_age},
        "storage": view.storage, "storage_bytes": view.storage_bytes, "upload_backlog": view.upload_backlog,
        "backup_schedule": view.backup_schedule, "next_backup": view.next_backup and view.next_backup.isoformat(),
        "backup_too_old": view.backup_too_old, "running": view.running,
        "job_counts": view.job_counts, "problems": view.problems,
        "drill": {"last_id": view.drill["last"] and view.drill["last"].pk, "verdict": view.drill["last_verdict"],
                  "age_seconds": view.drill["last_age"], "last_success_age_seconds": view.drill["last_success_age"],
                  "interval": view.drill["interval"], "warning": view.drill["warning"]},
    }
