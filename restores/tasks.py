"""Celery entry points: thin callers of the domain functions, messages carry ids only."""
from celery import shared_task

import pitrsite.celery  # noqa: F401 - the configured app (broker, routes) before any of these is sent
from fleet import servers
from pitrsite.jobs import JobReporter
from restores.engine import run_restore as restore
from restores.models import RestoreJob


@shared_task(name="restores.tasks.run_restore")
def run_restore(job_id: int) -> None:
    job = RestoreJob.all_servers.select_related("server").get(pk=job_id)
    with servers.using(job.server):
        restore(job, JobReporter(job))


@shared_task(name="restores.tasks.drill")
def drill(job_id: int | None = None, server: str | None = None) -> None:
    """Beat sends no id: a new drill of the demo server here, and one message per other server to its own
    queue (walcatalog.tasks.per_server); a caller that queued a drill job sends its id."""
    from restores.drill import new_drill, run_drill
    from walcatalog.tasks import per_server

    if job_id is not None:
        job = RestoreJob.all_servers.select_related("server").get(pk=job_id)
        with servers.using(job.server):
            run_drill(job, JobReporter(job))
        return
    scope, _ = per_server(drill, server, "drill")
    with scope:
        job = new_drill("beat")
        run_drill(job, JobReporter(job))

