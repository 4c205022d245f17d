"""Celery tasks of the WAL catalog: thin callers of the domain functions.

The periodic ones go through pitrsite.periodic.run_periodic: skipped quietly only while another pass
holds the lock, any other failure logged at WARNING and shown on the overview.
"""
from __future__ import annotations

import logging

from celery import shared_task

import pitrsite.celery  # noqa: F401 - the configured app (broker, routes) before any of these is sent
from pitrsite import locks
from pitrsite.periodic import run_periodic
from walcatalog.indexer import index_archive

log = logging.getLogger(__name__)


@shared_task(name="walcatalog.tasks.index_wal", ignore_result=True)
def index_wal() -> dict | None:
    """One index pass (beat runs it every PITR_INDEX_INTERVAL s); skipped while another is still running."""
    def work():
        with locks.INDEX.held():
            result = index_archive()
        if result.new or result.completed or result.vanished or result.errors:
            log.info("index_wal: %s", result)
        return result

    result = run_periodic("index_wal", work)
    return result.as_dict() if result else None


@shared_task(name="walcatalog.tasks.scrub", ignore_result=True)
def scrub() -> dict | None:
    """Re-hash archive segments (beat, every PITR_SCRUB_INTERVAL s); corruption is logged at WARNING."""
    from walcatalog.scrub import scrub_archive

    result = run_periodic("scrub", scrub_archive)
    return result.as_dict() if result else None


@shared_task(name="walcatalog.tasks.run_backup")
def run_backup(backup_id: int) -> None:
    """Take the queued backup; progress goes into its row (the dashboard reads it)."""
    from pitrsite.jobs import JobReporter
    from walcatalog import backups
    from walcatalog.models import BaseBackup

    backup = BaseBackup.objects.get(pk=backup_id)
    backups.run_backup(backup, JobReporter(backup))


@shared_task(name="walcatalog.tasks.scheduled_backup", ignore_result=True)
def scheduled_backup() -> int | None:
    """A base backup on PITR_BACKUP_SCHEDULE (beat); skipped while another backup runs, failures recorded."""
    from pitrsite.jobs import JobReporter
    from walcatalog import backups

    def work() -> int:
        backup = backups.queue_backup(trigger="beat")
        return backups.run_backup(backup, JobReporter(backup)).pk

    return run_periodic("scheduled_backup", work)


# --- archive storage (walcatalog/uploader.py, walcatalog/retention.py) -----------------------------------
@shared_task(name="walcatalog.tasks.upload", ignore_result=True)
def upload() -> dict | None:
    """One upload pass (beat runs it every PITR_UPLOAD_INTERVAL s); skipped while another is still running."""
    from walcatalog.uploader import upload_pass

    result = run_periodic("upload", upload_pass)
    if result and (result.uploaded or result.errors):
        log.log(logging.WARNING if result.errors else logging.INFO, "upload: %s", result)
    return result.as_dict() if result else None


@shared_task(name="walcatalog.tasks.retention", ignore_result=True)
def retention() -> dict | None:
    """Apply the retention policy (beat, every PITR_RETENTION_INTERVAL s)."""
    from walcatalog.retention import apply_retention

    result = run_periodic("retention", apply_retention)
    if result and (result.deleted_backups or result.deleted_segments):
        log.info("retention: %s", result)
    return result.as_dict() if result else None
