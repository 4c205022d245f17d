"""Killed and refused jobs (issue 10): a SIGKILLed backup or restore reads interrupted on the next read and
leaves nothing running or half-written; a second job is refused in one line and never left queued."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from fleet import pg
from pitrsite import jobs, locks, procs
from pitrsite.errors import PitrError
from pitrsite.jobs import JobReporter, JobState, run_job
from restores.models import RestoreJob
from restores.targets import RestoreTarget
from tests.conftest import PROJECT, manage, subprocess_env, wait_for
from tests.restore_helpers import wait_captured
from walcatalog.models import BaseBackup

pytestmark = [pytest.mark.fleet, pytest.mark.django_db(transaction=True)]


def start_manage(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(PROJECT / "manage.py"), *args], env=subprocess_env(**env),
                            cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def basebackup_slots(fleet) -> list[str]:
    with pg.connect(fleet.layout.port("primary"), dbname="postgres") as conn:
        return [r[0] for r in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'pg_basebackup%'").fetchall()]


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_killed_backup_reads_interrupted_at_once_and_leaves_nothing(fleet):
    proc = start_manage("backup", PITR_BACKUP_MAX_RATE="32k")  # throttled: still copying when the kill comes
    job = wait_for(lambda: BaseBackup.objects.filter(state=JobState.RUNNING,
                                                     current_step__startswith="copying").first(),
                   120, "the backup to start copying")
    # pg_basebackup and its forked WAL streamer, both in the process group the job recorded.
    tools = wait_for(lambda: len(procs.client_pids("pg_basebackup", job.label)) >= 2
                     and procs.client_pids("pg_basebackup", job.label),
                     60, "pg_basebackup to fork its WAL streamer")
    groups = {int(g) for g in (Path(settings.PITR_HOME) / "run" / "children" / f"BaseBackup-{job.pk}.pgids")
              .read_text().split()}
    assert {os.getpgid(pid) for pid in tools} <= groups
    wait_for(lambda: basebackup_slots(fleet), 60, "pg_basebackup's temporary slot")
    assert Path(BaseBackup.objects.get(pk=job.pk).path).is_dir()

    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    listed = {b["label"]: b for b in json.loads(manage("backups", "--json").stdout)}  # no reaper ran: the read reaps
    assert listed[job.label]["state"] == "interrupted" and not listed[job.label]["restorable"]
    assert "interrupted" in listed[job.label]["error"]
    wait_for(lambda: not procs.client_pids("pg_basebackup", job.label), 5,
             "the killed backup's pg_basebackup to be gone")
    t0 = time.monotonic()
    wait_for(lambda: not basebackup_slots(fleet), 5, "the temporary slot to vanish with its connection")
    print(f"slot gone {time.monotonic() - t0:.1f} s after the reaping read")
    assert not Path(BaseBackup.objects.get(pk=job.pk).path).exists(), "the partial backup directory is left"
    assert not (Path(settings.PITR_HOME) / "staging" / f"verify-{job.label}").exists()


def test_killed_restore_reads_interrupted_and_the_target_is_stopped(fleet):
    manage("backup")
    with pg.connect(fleet.layout.port("primary")) as conn:  # WAL to replay after the backup
        conn.execute("INSERT INTO test_data (payload) SELECT repeat('k', 200) FROM generate_series(1, 20000)")
    wait_captured(60)
    proc = start_manage("restore", "--latest")
    job = wait_for(lambda: RestoreJob.objects.filter(state=JobState.RUNNING, current_step="replaying WAL").first()
                   or proc.poll() is not None, 300, "the restore to start replaying")
    assert proc.poll() is None, "the restore ended before it could be killed"
    wait_for(lambda: fleet.state("restore_target") == "running", 60, "the restore target to start replaying")
    # Held in recovery, so that it cannot promote before the kill: what a long replay looks like.
    fleet.pause("restore_target")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    staging = Path(settings.PITR_HOME) / "staging" / f"restore-{job.pk}"
    assert staging.is_dir()

    manage("walstatus", "--json")  # any read of job state reaps
    job.refresh_from_db()
    assert job.state == JobState.INTERRUPTED and job.promoted_at is None and "interrupted" in job.error
    assert fleet.state("restore_target") == "stopped", "the target would promote itself, unverified"
    for suffix in ("", "-wal", "-backup"):
        assert not Path(f"{staging}{suffix}").exists()
    again = json.loads(manage("restore", "--latest", "--json").stdout)
    assert again["state"] == "done" and again["promoted_at"]


def test_second_backup_is_refused_in_one_line_and_no_row_stays_queued(fleet):
    from dashboard import actions
    from walcatalog import tasks
    from walcatalog.backups import queue_backup

    waiting = queue_backup()  # queued just before another backup took the lock
    before = BaseBackup.objects.count()
    with locks.BACKUP.held():  # what a running backup holds
        line = one_line(manage("backup", check=False))
        assert "another base backup is running" in line
        with pytest.raises(PitrError, match="another base backup is running"):
            actions.start_backup("zstd", trigger="dashboard")
        assert BaseBackup.objects.count() == before, "a refused submission must not leave a row"
        with pytest.raises(PitrError, match="another base backup is running"):
            tasks.run_backup(waiting.pk)  # the Celery task's body, as the worker runs it
    waiting.refresh_from_db()
    assert waiting.state == JobState.FAILED and waiting.error.startswith("refused: another base backup is running")
    assert not BaseBackup.objects.filter(state=JobState.QUEUED).exists()


def test_second_restore_is_refused_in_one_line_and_no_row_stays_queued(fleet):
    from restores import tasks
    from restores.service import queue_restore

    manage("backup")
    waiting = queue_restore(RestoreTarget.from_options(immediate=True))
    before = RestoreJob.objects.count()
    with locks.RESTORE.held():
        assert "another restore is running" in one_line(manage("restore", "--immediate", check=False))
        assert RestoreJob.objects.count() == before
        with pytest.raises(PitrError, match="another restore is running"):
            tasks.run_restore(waiting.pk)
    waiting.refresh_from_db()
    assert waiting.state == JobState.FAILED and "refused: another restore is running" in waiting.error
    assert not RestoreJob.objects.filter(state=JobState.QUEUED).exists()


def test_busy_restore_port_is_refused_before_the_target_is_touched(fleet):
    from restores.engine import run_restore
    from restores.service import queue_restore

    manage("backup")
    queued = queue_restore(RestoreTarget.from_options(immediate=True))  # queued while the port was ours
    fleet.stop("restore_target", mode="immediate")
    datadir = fleet.layout.datadir("restore_target")
    assert (datadir / "PG_VERSION").exists()
    port = fleet.layout.port("restore_target")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the stopped target's TIME_WAITs linger
        squatter.bind((settings.PITR_HOST, port))
        squatter.listen()
        line = one_line(manage("restore", "--immediate", check=False))
        assert f"port {port}" in line and "already in use" in line and "PITR_RESTORE_PORT" in line
        with pytest.raises(PitrError, match="already in use"):
            run_restore(queued, JobReporter(queued))
    queued.refresh_from_db()
    assert queued.state == JobState.FAILED and "planning" in queued.error
    assert (datadir / "PG_VERSION").exists(), "the target was emptied although its port was taken"
    assert fleet.state("restore_target") == "stopped"


def test_heartbeat_beats_during_a_silent_step(fleet, monkeypatch):
    from walcatalog.backups import queue_backup

    monkeypatch.setattr(jobs, "HEARTBEAT_INTERVAL", 0.2, raising=False)
    job = queue_backup()
    beats = []

    def silent_step() -> None:  # a long extract or replay: no progress call at all
        for _ in range(10):
            time.sleep(0.5)
            beats.append(BaseBackup.objects.get(pk=job.pk).heartbeat_at)

    # No step or progress is reported: only the heartbeat thread writes the row.
    run_job(job, JobReporter(job), silent_step)
    assert beats[-1] > beats[0] > job.started_at, f"heartbeat_at never moved: {beats}"


def test_restore_killed_while_planning_leaves_the_previous_target_running(fleet):
    from pitrsite.jobs import HOST, reap_local

    if fleet.state("restore_target") != "running":
        manage("backup")
        manage("restore", "--immediate")
    dead = subprocess.Popen(["true"])
    dead.wait()
    job = RestoreJob.objects.create(target_kind="immediate", state=JobState.RUNNING, current_step="planning",
                                    owner_host=HOST, owner_pid=dead.pid)
    assert reap_local() == 1
    job.refresh_from_db()
    assert job.state == JobState.INTERRUPTED
    assert fleet.state("restore_target") == "running", "it had not touched the target: the last restore stays up"


def dead_pid() -> int:
    gone = subprocess.Popen(["true"])
    gone.wait()
    return gone.pid


@pytest.mark.parametrize("url", ["/backups/", "/jobs/backup/{pk}.json", "/"])
def test_dashboard_reads_reap(client, django_user_model, url):
    from django.urls import reverse

    from pitrsite.jobs import HOST

    client.force_login(django_user_model.objects.create_user("viewer", password="x"))
    job = BaseBackup.objects.create(label="pitr_killed", state=JobState.RUNNING, owner_host=HOST, owner_pid=dead_pid())
    path = reverse("dashboard:job_json", args=["backup", job.pk]) if "{pk}" in url else url
    assert client.get(path).status_code == 200
    job.refresh_from_db()
    assert job.state == JobState.INTERRUPTED
