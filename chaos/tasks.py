"""Celery entry point of chaos runs: a thin caller of chaos.run.run_chaos; the message carries the id only."""
from celery import shared_task

import pitrsite.celery  # noqa: F401 - the configured app (broker, routes) before any of these is sent

from chaos.models import ChaosRun
from chaos.run import run_chaos as chaos
from fleet import servers
from pitrsite.jobs import JobReporter


@shared_task(name="chaos.tasks.run_chaos")
def run_chaos(run_id: int) -> None:
    run = ChaosRun.all_servers.select_related("server").get(pk=run_id)
    with servers.using(run.server):
        chaos(run, JobReporter(run))
