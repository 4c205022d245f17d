"""Celery tasks of the WAL catalog: thin callers of walcatalog.indexer."""
from __future__ import annotations

import logging
from contextlib import ExitStack

from celery import shared_task

from pitrsite.errors import PitrError
from pitrsite.jobs import exclusive
from walcatalog.indexer import index_archive

log = logging.getLogger(__name__)


@shared_task(name="walcatalog.tasks.index_wal", ignore_result=True)
def index_wal() -> dict | None:
    """One index pass (beat runs it every PITR_INDEX_INTERVAL s); skipped while another is still running."""
    with ExitStack() as stack:
        try:
            stack.enter_context(exclusive("index-wal", "WAL index pass"))
        except PitrError as exc:
            # A slow pass overlapping the next beat tick is normal: that tick has nothing to add.
            log.info("index_wal skipped: %s", exc)
            return None
        try:
            result = index_archive()
        except PitrError as exc:  # e.g. the archive is not there yet: say so, keep the worker healthy
            log.warning("index_wal: %s", exc)
            return None
        if result.new or result.completed or result.vanished or result.errors:
            log.info("index_wal: %s", result)
        return result.as_dict()


@shared_task(name="walcatalog.tasks.scrub", ignore_result=True)
def scrub() -> dict:
    """Re-hash archive segments (beat, every PITR_SCRUB_INTERVAL s); corruption is logged at WARNING."""
    from walcatalog.scrub import scrub_archive

    return scrub_archive().as_dict()


@shared_task(name="walcatalog.tasks.run_backup")
def run_backup(backup_id: int) -> None:
    """Take the queued backup; progress goes into its row (the dashboard reads it)."""
    from pitrsite.jobs import JobReporter
    from walcatalog import backups
    from walcatalog.models import BaseBackup

    backup = BaseBackup.objects.get(pk=backup_id)
    backups.run_backup(backup, JobReporter(backup))


# --- archive storage (walcatalog/uploader.py, walcatalog/retention.py) -----------------------------------
@shared_task(name="walcatalog.tasks.upload", ignore_result=True)
def upload() -> dict | None:
    """One upload pass (beat runs it every PITR_UPLOAD_INTERVAL s); skipped while another is still running."""
    from walcatalog.uploader import upload_pass

    try:
        result = upload_pass()
    except PitrError as exc:  # another pass still running, or storage misconfigured: say so, stay healthy
        log.info("upload skipped: %s", exc)
        return None
    if result.uploaded or result.errors:
        log.log(logging.WARNING if result.errors else logging.INFO, "upload: %s", result)
    return result.as_dict()


@shared_task(name="walcatalog.tasks.retention", ignore_result=True)
def retention() -> dict | None:
    """Apply the retention policy (beat, every PITR_RETENTION_INTERVAL s)."""
    from walcatalog.retention import apply_retention

    try:
        result = apply_retention()
    except PitrError as exc:  # a backup, upload or restore is running: the next tick will do
        log.info("retention skipped: %s", exc)
        return None
    if result.deleted_backups or result.deleted_segments:
        log.info("retention: %s", result)
    return result.as_dict()
