"""Celery entry points: thin callers of the domain functions, messages carry ids only."""
from celery import shared_task

from pitrsite.jobs import JobReporter
from restores.engine import run_restore as restore
from restores.models import RestoreJob


@shared_task(name="restores.tasks.run_restore")
def run_restore(job_id: int) -> None:
    job = RestoreJob.objects.get(pk=job_id)
    restore(job, JobReporter(job))

