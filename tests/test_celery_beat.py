"""Celery beat runs the indexer on its own: new segments reach the catalog with no direct call."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from pitrsite.jobs import HOST, JobState
from tests.conftest import wait_for
from walcatalog.models import BaseBackup, WalSegment

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


def test_beat_indexes_new_segments(fleet, primary, celery_worker):
    assert settings.PITR_INDEX_INTERVAL <= 1, "tests run the indexer every second"
    WalSegment.objects.all().delete()  # committed: the worker must fill the catalog again by itself
    wait_for(lambda: WalSegment.objects.filter(is_partial=False).exists(), 30,
             "beat's index_wal to catalog the archive")

    primary.execute("INSERT INTO test_data (payload) VALUES ('beat')")
    name = primary.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    wait_for(lambda: WalSegment.objects.filter(name=name, is_partial=False).exclude(sha256="").exists(), 30,
             f"{name} to appear complete in the catalog through beat")
    primary.execute("INSERT INTO test_data (payload) VALUES ('beat partial')")
    completed = WalSegment.objects.get(name=name).segno
    wait_for(lambda: WalSegment.objects.filter(is_partial=True, segno__gt=completed).exists(),
             30, "the next .partial to appear in the catalog through beat")
    log = (Path(settings.PITR_HOME) / "logs" / "celery-test.log").read_text()
    assert "walcatalog.tasks.index_wal" in log
    failures = [line for line in log.splitlines() if "index_wal[" in line and "raised unexpected" in line]
    assert failures == [], failures


def test_reap_jobs_task_runs_in_the_worker(celery_worker):
    from pitrsite.celery import app

    dead = subprocess.Popen(["true"])
    dead.wait()
    job = BaseBackup.objects.create(label="beat-reap-test", state=JobState.RUNNING, owner_host=HOST,
                                    owner_pid=dead.pid, current_step="copying")
    app.send_task("pitrsite.tasks.reap_jobs")
    wait_for(lambda: BaseBackup.objects.get(pk=job.pk).state == JobState.INTERRUPTED, 30,
             "reap_jobs in the worker to mark the job of a dead process interrupted")
    assert "copying" in BaseBackup.objects.get(pk=job.pk).error
