"""Celery entry points: thin callers of the domain functions, messages carry ids only."""
from celery import shared_task

import pitrsite.celery  # noqa: F401 - the configured app (broker, routes) before any of these is sent

from pitrsite.jobs import JobReporter
from restores.engine import run_restore as restore
from restores.models import RestoreJob


@shared_task(name="restores.tasks.run_restore")
def run_restore(job_id: int) -> None:
    job = RestoreJob.objects.get(pk=job_id)
    restore(job, JobReporter(job))


@shared_task(name="restores.tasks.drill")
def drill(job_id: int | None = None) -> None:
    """Beat sends no id (a new drill); a caller that queued a drill job sends its id."""
    from restores.drill import new_drill, run_drill

    job = RestoreJob.objects.get(pk=job_id) if job_id is not None else new_drill("beat")
    run_drill(job, JobReporter(job))

