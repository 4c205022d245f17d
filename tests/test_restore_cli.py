"""The commands a user runs, end to end, and what a SIGKILL in the middle leaves behind."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleet import pg
from pitrsite import locks, procs
from pitrsite.errors import PitrError
from pitrsite.jobs import JobReporter, JobState, reap
from restores.engine import run_restore
from restores.models import RestoreJob
from restores.service import queue_restore
from restores.targets import RestoreTarget
from tests.conftest import PROJECT, manage, subprocess_env, wait_for
from tests.restore_helpers import primary_ids_committed, restored_ids, wait_captured, write_rows
from walcatalog.models import BaseBackup

pytestmark = [pytest.mark.fleet, pytest.mark.django_db(transaction=True)]


def start_manage(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(PROJECT / "manage.py"), *args], env=subprocess_env(**env),
                            cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_backup_then_restore_to_a_time_from_the_command_line(fleet):
    backup = json.loads(manage("backup", "--compress", "gzip", "--json").stdout)
    assert backup["state"] == "done" and backup["restorable"] and backup["compression"] == "gzip"
    listed = json.loads(manage("backups", "--json").stdout)
    assert backup["label"] in [b["label"] for b in listed]
    with pg.connect(fleet.layout.port("primary")) as conn:
        rows = write_rows(conn, 12, "cli", switch_every=4)
        wait_captured()
        target = rows[6].committed_at
        job = json.loads(manage("restore", "--target-time", target.isoformat(), "--json").stdout)
        assert job["state"] == "done" and job["promoted_at"] and job["final_timeline"] > 1
        assert restored_ids(fleet) == primary_ids_committed(conn, target)


def test_bad_target_on_the_command_line_is_one_line(fleet):
    result = manage("restore", "--target-time", "2026-11-27 14:03:27", check=False)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "has no time zone" in result.stderr
    # With --json, stdout is still one JSON document: the error, and the exit status says it failed.
    as_json = manage("restore", "--target-time", "2026-11-27 14:03:27", "--json", check=False)
    assert as_json.returncode == 1
    assert "has no time zone" in json.loads(as_json.stdout)["error"]


def test_killed_backup_reads_interrupted_and_the_next_one_works(fleet):
    # Throttled so that it is still copying when the kill comes.
    proc = start_manage("backup", PITR_BACKUP_MAX_RATE="32k")
    job = wait_for(lambda: BaseBackup.objects.filter(state=JobState.RUNNING,
                                                     current_step__startswith="copying").first(),
                   60, "the backup to start copying")
    second = manage("backup", check=False)
    assert second.returncode != 0 and "another base backup is running" in second.stderr
    assert second.stderr.strip().count("\n") == 0
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    job.refresh_from_db()
    assert job.state == JobState.RUNNING  # nobody has looked yet
    assert reap(BaseBackup) == 1
    job.refresh_from_db()
    assert job.state == JobState.INTERRUPTED and not job.restorable and "interrupted" in job.error
    # pg_basebackup dies with its parent (PDEATHSIG); its forked WAL streamer exits when it reads EOF
    # from the pipe to its dead parent, which it checks at least every status interval (10 s).
    t0 = time.monotonic()
    wait_for(lambda: not procs.client_pids("pg_basebackup", job.label), 30, "pg_basebackup to die with its parent")
    print(f"pg_basebackup gone {time.monotonic() - t0:.1f} s after the reap")
    again = json.loads(manage("backup", "--json").stdout)
    assert again["state"] == "done" and again["restorable"]


def test_killed_restore_reads_interrupted_and_the_next_one_works(fleet):
    manage("backup")
    proc = start_manage("restore", "--latest")
    job = wait_for(lambda: RestoreJob.objects.filter(state=JobState.RUNNING).first() or proc.poll() is not None,
                   120, "the restore to start")
    assert proc.poll() is None, f"restore exited early: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert reap(RestoreJob) == 1
    job.refresh_from_db()
    assert job.state == JobState.INTERRUPTED and job.promoted_at is None
    again = json.loads(manage("restore", "--latest", "--json").stdout)
    assert again["state"] == "done" and again["promoted_at"]
    assert procs.alive(fleet.pid("restore_target"))


def test_a_second_restore_while_one_runs_is_refused(fleet):
    manage("backup")
    job = queue_restore(RestoreTarget.from_options(immediate=True))
    with locks.RESTORE.held():  # what a running restore holds (an flock: per open file, not per process)
        with pytest.raises(PitrError, match="another restore is running"):
            run_restore(job, JobReporter(job))
    job.refresh_from_db()
    # No worker will run it again: it must not read queued forever.
    assert job.state == JobState.FAILED and job.error.startswith("refused: another restore is running")
    again = queue_restore(RestoreTarget.from_options(immediate=True))
    assert run_restore(again, JobReporter(again)).state == JobState.DONE
