"""Starting jobs from the web: the domain's queue_* function makes the row, then Celery gets its id.

Used by the dashboard views and the admin actions alike. Imports are lazy so
that importing the dashboard never imports Celery task modules.
"""
from __future__ import annotations

import logging

from django.db import transaction

from fleet import servers
from pitrsite.errors import QueueError, StepFailed, first_line
from pitrsite.jobs import Job, JobState

log = logging.getLogger(__name__)


def _send(job: Job, task, what: str) -> None:
    """Hand the job id to Celery; a broker that cannot be reached fails the row instead of leaving it queued."""
    def send() -> None:
        try:
            # On the queue of the host holding the server's archive and restore target.
            task.apply_async(args=[job.pk], queue=servers.queue_of(job.server), retry=True,  # type: ignore[attr-defined]
                             retry_policy={"max_retries": 2, "interval_start": 0.2})
        except Exception as exc:  # noqa: BLE001 - kombu/redis errors vary; the row must say what happened
            reason = first_line(exc)
            job.finish(JobState.FAILED, str(StepFailed("queueing", f"Celery broker unreachable: {reason}")))
            log.error("could not queue %s #%s: %s", what, job.pk, reason)
            raise QueueError(f"{what} #{job.pk} could not be queued: "
                             f"the Celery broker is unreachable ({reason})") from exc
    transaction.on_commit(send, robust=False)


def _started_by(job: Job, user: str) -> None:
    """Who asked, beside the trigger (dashboard, admin): set on the new row before Celery sees its id."""
    if user:
        type(job).objects.filter(pk=job.pk).update(started_by=user)
        job.started_by = user


def start_backup(compression: str, trigger: str, user: str = ""):
    from walcatalog.backups import queue_backup
    from walcatalog.tasks import run_backup

    backup = queue_backup(compression=compression, trigger=trigger)
    _started_by(backup, user)
    _send(backup, run_backup, "backup")
    return backup


def start_restore(target, trigger: str, user: str = "", as_new_primary: dict | None = None):
    from restores.service import queue_restore
    from restores.tasks import run_restore

    job = queue_restore(target, trigger=trigger, as_new_primary=as_new_primary)
    _started_by(job, user)
    _send(job, run_restore, "restore")
    return job


def start_chaos(params: dict, trigger: str, user: str = ""):
    from chaos.run import queue_chaos
    from chaos.tasks import run_chaos

    run = queue_chaos(params, trigger=trigger)
    _started_by(run, user)
    _send(run, run_chaos, "chaos run")
    return run


def cancel_job(job: Job, user: str) -> bool:
    from pitrsite.cancel import cancel

    return cancel(job, by=user)
