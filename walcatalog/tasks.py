"""Celery tasks of the WAL catalog: thin callers of the domain functions.

The periodic ones go through pitrsite.periodic.run_periodic: skipped quietly only while another pass
holds the lock, any other failure logged at WARNING and shown on the overview.
"""
from __future__ import annotations

import logging

from contextlib import ExitStack

from celery import shared_task

import pitrsite.celery  # noqa: F401 - the configured app (broker, routes) before any of these is sent
from fleet import servers
from fleet.models import Server, ServerKind
from pitrsite.jobs import JobReporter
from pitrsite.periodic import run_periodic
# At the top, not in the tasks: the worker imports them once before it forks its children, instead of each
# child on its first backup (that import was 0.09-0.15 s of the job's wait).
from walcatalog import backups
from walcatalog.indexer import scheduled_pass
from walcatalog.models import BaseBackup
from walcatalog.retention import apply_retention
from walcatalog.scrub import scrub_archive
from walcatalog.uploader import upload_pass

log = logging.getLogger(__name__)


def per_server(task, server: str | None, name: str) -> tuple[ExitStack, str]:
    """Beat sends a periodic task without a server: that message does the demo server's pass and sends one
    message per other server to the server's own queue (its host holds its archive). Servers added later are
    served from the next tick on, without restarting beat."""
    stack = ExitStack()
    if server is None:
        for other in Server.objects.exclude(kind=ServerKind.MANAGED):
            task.apply_async(kwargs={"server": other.name}, queue=servers.queue_of(other))
        return stack, name
    chosen = Server.objects.get(name=server)
    stack.enter_context(servers.using(chosen))
    return stack, name if chosen.managed else f"{name}-{chosen.name}"


@shared_task(name="walcatalog.tasks.index_wal", ignore_result=True)
def index_wal(server: str | None = None) -> dict | None:
    """One index pass (beat runs it every PITR_INDEX_INTERVAL s); skipped while another is still running."""
    def work():
        result = scheduled_pass()
        if result.new or result.completed or result.vanished or result.errors:
            log.info("index_wal %s: %s", servers.current().name, result)
        return result

    scope, name = per_server(index_wal, server, "index_wal")
    with scope:
        result = run_periodic(name, work)
    return result.as_dict() if result else None


@shared_task(name="walcatalog.tasks.scrub", ignore_result=True)
def scrub(server: str | None = None) -> dict | None:
    """Re-hash archive segments (beat, every PITR_SCRUB_INTERVAL s); corruption is logged at WARNING."""
    scope, name = per_server(scrub, server, "scrub")
    with scope:
        result = run_periodic(name, scrub_archive)
    return result.as_dict() if result else None


@shared_task(name="walcatalog.tasks.run_backup")
def run_backup(backup_id: int) -> None:
    """Take the queued backup; progress goes into its row (the dashboard reads it)."""

    backup = BaseBackup.all_servers.select_related("server").get(pk=backup_id)
    with servers.using(backup.server):
        backups.run_backup(backup, JobReporter(backup))


@shared_task(name="walcatalog.tasks.scheduled_backup", ignore_result=True)
def scheduled_backup(server: str | None = None) -> int | None:
    """A base backup of each server but a retired one (it takes none any more) on PITR_BACKUP_SCHEDULE
    (beat), on its own queue; skipped while another backup of it runs, failures recorded."""
    def work() -> int | None:
        if servers.current().retired_at is not None:
            return None
        backup = backups.queue_backup(trigger="beat")
        return backups.run_backup(backup, JobReporter(backup)).pk

    scope, name = per_server(scheduled_backup, server, "scheduled_backup")
    with scope:
        return run_periodic(name, work)


# --- archive storage (walcatalog/uploader.py, walcatalog/retention.py) -----------------------------------
@shared_task(name="walcatalog.tasks.upload", ignore_result=True)
def upload(server: str | None = None) -> dict | None:
    """One upload pass (beat runs it every PITR_UPLOAD_INTERVAL s); skipped while another is still running."""

    scope, name = per_server(upload, server, "upload")
    with scope:
        result = run_periodic(name, upload_pass)
    if result and (result.uploaded or result.errors):
        log.log(logging.WARNING if result.errors else logging.INFO, "upload: %s", result)
    return result.as_dict() if result else None


@shared_task(name="walcatalog.tasks.retention", ignore_result=True)
def retention(server: str | None = None) -> dict | None:
    """Apply the retention policy (beat, every PITR_RETENTION_INTERVAL s)."""
    scope, name = per_server(retention, server, "retention")
    with scope:
        result = run_periodic(name, apply_retention)
    if result and (result.deleted_backups or result.deleted_segments):
        log.info("retention: %s", result)
    return result.as_dict() if result else None
