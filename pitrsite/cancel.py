"""Cancelling a job: the row reads cancelled at once, its tools' process groups are killed, its code stops.

The row is the signal: JobReporter refuses to report for a cancelled job (raising JobCancelled), and
run_job, seeing the row cancelled whatever the code raised, cleans up as the reaper would (a restore
target stopped, a half-written backup removed) and never writes another state over it. A job that runs
other jobs in its own process (a chaos run's backup and restores) has them cancelled with it.
"""
from __future__ import annotations

import logging

from django.utils import timezone

from pitrsite import procs
from pitrsite.jobs import ACTIVE_STATES, Job, JobState, job_key, job_models
from pitrsite.locks import HOST
from pitrsite.runner import kill_children

log = logging.getLogger(__name__)


def cancel(job: Job, by: str) -> bool:
    """queued/running -> cancelled; False when it had ended already."""
    model = type(job)
    note = f"cancelled by {by}" + (f" during {job.current_step}" if job.current_step else "")
    if model.objects.filter(pk=job.pk, state__in=ACTIVE_STATES).update(
            state=JobState.CANCELLED, error=note, finished_at=timezone.now()) != 1:
        return False
    log.warning("%s #%s %s", model.__name__, job.pk, note)
    was_running = job.state == JobState.RUNNING
    job.refresh_from_db()
    if not was_running or job.owner_host != HOST:
        return True  # a queued job is never claimed now; another host's code stops at its next report
    for other in nested(job):
        cancel(other, by)
    kill_children(job_key(job))  # its tools die now; its code raises at the failed tool or next report
    if not procs.alive(job.owner_pid):  # nobody left to clean up after it
        job.on_reaped()
    return True


def nested(job: Job) -> list[Job]:
    """Other active jobs run by the same process (a chaos run's backup and restores)."""
    found: list[Job] = []
    for model in job_models():
        rows = model.objects.filter(state__in=ACTIVE_STATES, owner_host=job.owner_host, owner_pid=job.owner_pid)
        found.extend(row for row in rows if not (isinstance(row, type(job)) and row.pk == job.pk))
    return found
