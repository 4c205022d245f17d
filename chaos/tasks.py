"""Celery entry point of chaos runs: a thin caller of chaos.run.run_chaos; the message carries the id only."""
from celery import shared_task

import pitrsite.celery  # noqa: F401 - the configured app (broker, routes) before any of these is sent

from chaos.models import ChaosRun
from chaos.run import run_chaos as chaos
from pitrsite.jobs import JobReporter


@shared_task(name="chaos.tasks.run_chaos")
def run_chaos(run_id: int) -> None:
    run = ChaosRun.objects.get(pk=run_id)
    chaos(run, JobReporter(run))
