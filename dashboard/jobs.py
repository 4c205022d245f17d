"""The job kinds the dashboard shows, and one JSON shape for a job row.

Progress comes from the job rows (pitrsite.jobs.Job), never from Celery's
result backend, so a page opened after a restart still shows the truth.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, cast

from django.db.models import Count
from django.urls import reverse

from pitrsite import jobs
from pitrsite.jobs import ACTIVE_STATES, Job
from dashboard import progress

if TYPE_CHECKING:
    from restores.models import RestoreJob

def models_by_kind() -> dict[str, type[Job]]:
    """Every installed job kind (chaos runs only where the chaos app is installed)."""
    return {model.kind: model for model in jobs.job_models()}


def job_model(kind: str) -> type[Job] | None:
    return models_by_kind().get(kind)


def detail_url(job: Job) -> str:
    return reverse(f"dashboard:{job.kind}", args=[job.pk])


def job_json(job: Job) -> dict:
    """The row fields a live page needs (walcatalog.serializers' shapes), plus where to see it."""
    from restores.serializers import restore_dict
    from walcatalog.serializers import backup_dict, job_dict

    kind = job.kind
    serializers: dict[str, Callable[[Any], dict]] = {"backup": backup_dict, "restore": restore_dict}
    data = serializers.get(kind, job_dict)(job)
    # percent: the current step's own progress; overall_percent: the whole job's, which only grows.
    data.update(kind=kind, title=str(job), active=job.is_active, url=detail_url(job),
                percent=None if job.percent is None else round(job.percent, 1),
                overall_percent=progress.overall(kind, job.state, job.steps, job.current_step, job.progress_done,
                                         job.progress_total),
                progress_unit=progress.unit(kind, job.current_step), who=who(job))
    if kind == "restore":
        data.update(target_description=cast("RestoreJob", job).target_description, replay_percent=replay_percent(job))
    elif kind == "chaos":
        for name in ("verdict", "events", "results"):
            if hasattr(job, name):
                data[name] = getattr(job, name)
    return data


def log_tail(job: Job, lines: int = 200) -> list[str]:
    from pitrsite.joblog import tail
    from pitrsite.jobs import job_key

    return tail(job_key(job), lines)


def who(job: Job) -> str:
    """The user who started it, else what did (beat, a command, a chaos run)."""
    if job.started_by:
        return job.started_by
    names = {"celery": "beat", "drill": "beat (drill)", "command": "a command", "chaos": "a chaos run"}
    return names.get(job.trigger, job.trigger)


def replay_percent(job) -> float | None:
    """How far replay got from the backup's start towards the target LSN, when both are known."""
    if job.replay_lsn is None or job.target_lsn is None:
        return None
    start = job.backup.start_lsn if job.backup_id and job.backup.start_lsn is not None else None
    if start is None or job.target_lsn <= start:
        return 100.0 if job.replay_lsn >= job.target_lsn else None
    return round(max(0.0, min(100.0, 100.0 * (job.replay_lsn - start) / (job.target_lsn - start))), 1)


def running_jobs(limit: int = 20) -> list[Job]:
    found: list[Job] = []
    for model in models_by_kind().values():
        found.extend(model.objects.filter(state__in=ACTIVE_STATES).order_by("-created_at")[:limit])
    return sorted(found, key=lambda j: j.created_at, reverse=True)[:limit]


def counts_by_state() -> dict[str, dict[str, int]]:
    """{kind: {state: n}} in one GROUP BY per kind."""
    result = {}
    for kind, model in models_by_kind().items():
        rows = model.objects.order_by().values("state").annotate(n=Count("pk"))
        result[kind] = {row["state"]: row["n"] for row in rows}
    return result
