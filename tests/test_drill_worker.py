"""Restore drills as a user and the scheduler start them: `manage.py drill` and Celery beat's restore-drill."""
from __future__ import annotations

import json
import shutil

import pytest

from fleet import pg
from pitrsite import locks
from pitrsite.jobs import JobReporter, JobState
from restores.models import DRILL_TRIGGER, DrillVerdict, RestoreJob
from tests.conftest import manage, wait_for
from tests.restore_helpers import rot_index_page, wait_captured, write_rows
from walcatalog.backups import backup_dir, queue_backup, run_backup

pytestmark = [pytest.mark.fleet, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def backup(fleet):
    """A verified backup and rows after it, committed (the command and the worker are other processes)."""
    backup = queue_backup("none")
    run_backup(backup, JobReporter(backup))
    assert backup.state == JobState.DONE, backup.error
    with pg.connect(fleet.layout.port("primary")) as conn:
        write_rows(conn, 5, "drill-worker", switch_every=3)
    wait_captured()
    return backup


@pytest.fixture
def celery_worker_env(redis_server):
    yield {"PITR_DRILL_INTERVAL": "2"}
    import redis

    # Torn down after the worker: drills beat queued meanwhile must not run in a later test's worker.
    redis.Redis.from_url(redis_server).flushdb()


def test_drill_command_exit_status_says_the_verdict(fleet, backup):
    passed = manage("drill", "--json")
    job = json.loads(passed.stdout)
    assert job["drill_verdict"] == "passed" and job["state"] == "done", job
    assert job["drill_detail"]["end_reached"] and job["drill_detail"]["amcheck"]["exit"] == 0

    with locks.RESTORE.held():  # what a running restore holds
        skipped = manage("drill", check=False)
    assert skipped.returncode == 2
    assert " skipped: another restore is running (pid " in skipped.stderr.strip().splitlines()[-1]
    assert "Traceback" not in skipped.stderr

    with pg.connect(fleet.layout.port("primary")) as conn:
        conn.execute("DROP TABLE IF EXISTS drill_static")
        conn.execute("CREATE TABLE drill_static (id int PRIMARY KEY) WITH (autovacuum_enabled = off)")
        conn.execute("INSERT INTO drill_static SELECT generate_series(1, 5000)")
        conn.execute("VACUUM (FREEZE, ANALYZE) drill_static")
        index_path = conn.execute("SELECT pg_relation_filepath('drill_static_pkey')").fetchone()[0]
        rotten = queue_backup("none")
        run_backup(rotten, JobReporter(rotten))
        rot_index_page(rotten, index_path)
        failed = manage("drill", check=False)
        conn.execute("DROP TABLE drill_static")  # after the drill: replaying the drop would remove the rot
    assert failed.returncode == 1, failed.stderr
    last = failed.stderr.strip().splitlines()[-1]
    assert "failed: pg_amcheck found corruption: btree index \"pitr.public.drill_static_pkey\"" in last, last
    assert "Traceback" not in failed.stderr
    RestoreJob.objects.filter(backup=rotten).delete()
    rotten.delete()
    shutil.rmtree(backup_dir(rotten), ignore_errors=True)


def test_beat_runs_a_drill_by_itself(fleet, backup, celery_worker):
    assert not RestoreJob.objects.filter(trigger=DRILL_TRIGGER).exists()
    job = wait_for(lambda: RestoreJob.objects.filter(trigger=DRILL_TRIGGER).exclude(drill_verdict="")
                   .order_by("pk").first(), 300, "beat's restore-drill to run a drill with a verdict")
    assert job.drill_verdict == DrillVerdict.PASSED, job.drill_detail
    assert job.drill_detail["started_by"] == "beat" and job.backup_id == backup.pk
    assert job.drill_detail["end_reached"] and job.drill_detail["amcheck"]["exit"] == 0
