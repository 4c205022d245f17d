"""`scripts/pitr restore|backup`: pitrsite/client.py hands the arguments to a real web server (gunicorn, as
`services up` runs it), the real Celery worker runs the job, and the client prints what manage.py would."""
from __future__ import annotations

import http.client
import json
import signal
import subprocess

import pytest
from django.conf import settings

from fleet import pg, services
from fleet.layout import Layout
from pitrsite import apitoken
from pitrsite.jobs import JobReporter, JobState
from restores.models import RestoreJob
from tests.conftest import PROJECT, manage, subprocess_env, wait_for
from tests.restore_helpers import primary_ids_committed, restored_ids, wait_captured, write_rows
from walcatalog.backups import queue_backup, run_backup
from walcatalog.models import BaseBackup

pytestmark = [pytest.mark.fleet, pytest.mark.django_db(transaction=True)]
PITR = str(PROJECT / "scripts" / "pitr")


@pytest.fixture
def web(fleet, transactional_db):
    """gunicorn with the test settings, on PITR_WEB_PORT; the token exists as `services up` leaves it."""
    apitoken.ensure()
    log = Layout.current().logs / "web-test.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(services.argv("web", Layout.current()), stdout=out, stderr=subprocess.STDOUT,
                                env=subprocess_env(), cwd=PROJECT, start_new_session=True)
    wait_for(lambda: services.web_answers() or proc.poll() is not None, 60, "gunicorn to answer")
    if proc.poll() is not None:
        pytest.fail(f"gunicorn exited with {proc.returncode}: see {log}")
    yield proc
    proc.terminate()
    proc.wait(20)


@pytest.fixture
def backup(fleet):
    """A verified backup (each test's database starts empty), taken in this process."""
    made = queue_backup("none")
    run_backup(made, JobReporter(made))
    assert made.state == JobState.DONE, made.error
    return made


def pitr(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([PITR, *args], capture_output=True, text=True, env=subprocess_env(**env), cwd=PROJECT,
                          timeout=300)


def post(path: str, body: dict, headers: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(settings.PITR_HOST, settings.PITR_WEB_PORT, timeout=30)
    conn.request("POST", path, body=json.dumps(body), headers=headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_backup_and_restore_to_a_logged_moment_through_the_api(fleet, web, celery_worker):
    backup = pitr("backup", "--compress", "none")
    assert backup.returncode == 0, backup.stderr
    made = BaseBackup.objects.get()
    assert backup.stdout.startswith(f"backup {made.label} done: ") and "manifest verified" in backup.stdout
    assert "copying files (pg_basebackup)..." in backup.stderr  # the steps, as the console reporter prints them
    with pg.connect(fleet.layout.port("primary")) as conn:
        rows = write_rows(conn, 10, "client", switch_every=4)
        wait_captured()
        target = rows[5].committed_at
        result = pitr("restore", "--target-time", target.isoformat(), "--json")
        assert result.returncode == 0, result.stderr
        job = json.loads(result.stdout)  # the one JSON document manage.py restore --json prints
        assert job["state"] == "done" and job["promoted_at"] and job["target"]["value"] == target.isoformat()
        assert restored_ids(fleet) == primary_ids_committed(conn, target)
    assert result.stderr.startswith("planning...\n")
    row = RestoreJob.objects.get()
    assert (row.pk, row.trigger, row.owner_pid) == (job["id"], "command", celery_worker.pid)  # the worker ran it


def test_bad_arguments_read_as_manage_py_says_them_and_queue_nothing(web):
    for args in (["--target", "2026-11-27T14:03:27+00:00"], ["--nope"], ["--backup", "two", "--latest", "--json"]):
        ours, theirs = pitr("restore", *args), manage("restore", *args, check=False)
        assert (ours.returncode, ours.stderr, ours.stdout) == (2, theirs.stderr, theirs.stdout), args
        assert ours.stderr.count("\n") == 1 and "manage.py restore: error: " in ours.stderr
    refused = pitr("restore", "--target-time", "2026-11-27 14:03:27")  # parsed, then refused: no time zone
    assert refused.returncode == 1 and refused.stderr == manage("restore", "--target-time", "2026-11-27 14:03:27",
                                                                 check=False).stderr
    assert refused.stderr.startswith("CommandError: ") and "has no time zone" in refused.stderr
    bad = pitr("backup", "--compress", "rar", "--json")
    assert bad.returncode == 1 and "unknown compression 'rar'" in json.loads(bad.stdout)["error"]
    assert not RestoreJob.objects.exists() and not BaseBackup.objects.exists()


def test_a_wrong_or_missing_token_is_refused_and_queues_nothing(web):
    body = {"argv": ["--latest"]}
    for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": apitoken.ensure()}):
        code, answer = post("/api/commands/restore", body, headers)
        assert code == 401 and "Authorization: Bearer" in answer["error"], headers
    conn = http.client.HTTPConnection(settings.PITR_HOST, settings.PITR_WEB_PORT, timeout=30)
    conn.request("GET", "/api/jobs/restore/1")
    assert conn.getresponse().status == 401
    assert not RestoreJob.objects.exists()
    assert apitoken.path().stat().st_mode & 0o777 == 0o600


def test_a_look_at_a_job_waits_for_its_end(web):
    """?wait=S&seen=N holds the answer until the job ends (or starts a step past N): the client's wait."""
    import threading

    job = queue_backup("none")
    token = {"Authorization": f"Bearer {apitoken.ensure()}"}

    def get(query: str) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(settings.PITR_HOST, settings.PITR_WEB_PORT, timeout=30)
        conn.request("GET", f"/api/jobs/backup/{job.pk}{query}", headers=token)
        response = conn.getresponse()
        return response.status, json.loads(response.read())

    assert get("?wait=0.1&seen=0")[1]["active"] is True  # nothing changed within the wait
    def end() -> None:
        from django.db import connection

        BaseBackup.objects.filter(pk=job.pk).update(state=JobState.FAILED, error="ended by the test")
        connection.close()  # this thread's own

    ending = threading.Timer(0.5, end)
    ending.start()
    try:
        code, answer = get("?wait=20&seen=0")
    finally:
        ending.join()
    assert code == 200 and answer["active"] is False and answer["error"] == "ended by the test"
    assert get("?wait=soon")[0] == 400


def test_a_failing_job_exits_1_with_its_reason(fleet, web, celery_worker):
    """Queueing a backup asks nothing of the primary; the worker's job finds it stopped, fails, and the
    client says why in the job's own words."""
    fleet.stop("primary")
    try:
        result = pitr("backup", "--json")
    finally:
        fleet.start("primary")
        wait_captured(60)
    assert result.returncode == 1, result.stderr
    row = BaseBackup.objects.get()
    last = result.stderr.strip().splitlines()[-1]
    assert row.state == "failed" and last == f"CommandError: {row.error}" and last.startswith("CommandError: failure ")
    assert json.loads(result.stdout) == {"error": row.error}  # what manage.py backup --json prints then


def test_ctrl_c_cancels_the_job(fleet, backup, web, celery_worker):
    proc = subprocess.Popen([PITR, "restore", "--latest"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=subprocess_env(), cwd=PROJECT)
    wait_for(lambda: RestoreJob.objects.filter(state="running").exists(), 60, "the restore to run")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    row = RestoreJob.objects.get()
    assert proc.returncode == 130 and f"interrupted: restore #{row.pk} cancelled" in err, err
    row.refresh_from_db()
    assert row.state == "cancelled" and "cancelled by the command (Ctrl-C)" in row.error
    wait_for(lambda: not RestoreJob.objects.filter(state__in=("queued", "running")).exists(), 30, "nothing active")


def test_without_the_web_service_it_runs_manage_py_here(fleet):
    apitoken.ensure()
    down = pitr("restore", "--nope")  # no web server in this test: the port refuses
    theirs = manage("restore", "--nope", check=False)
    first, rest = down.stderr.split("\n", 1)
    assert first == (f"the web service at http://{settings.PITR_HOST}:{settings.PITR_WEB_PORT}/ does not answer: "
                     "running manage.py restore in this process")
    assert (down.returncode, rest) == (2, theirs.stderr)
    apitoken.path().unlink()
    try:
        missing = pitr("backup", "--compress", "rar")
    finally:
        apitoken.ensure()
    assert missing.stderr.startswith(f"no API token at {apitoken.path()} (the services were not started): "
                                     "running manage.py backup in this process\n")
    assert missing.returncode == 1 and "unknown compression 'rar'" in missing.stderr
