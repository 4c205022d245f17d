"""Cancelling a running job from the dashboard: its process group is killed, the row reads cancelled, the code
that ran it stops at its next report without writing another state, and the next job runs.

The job's work here is a real tool (`sleep`) started in its own process group through pitrsite.runner.popen,
then progress reports: the same machinery a backup's pg_basebackup and a restore's replay loop use.
"""
from __future__ import annotations

import subprocess
import threading
import time

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client

from pitrsite import procs
from pitrsite.errors import JobCancelled
from pitrsite.jobs import JobReporter, JobState, job_key, run_job
from pitrsite.runner import popen
from walcatalog.models import BaseBackup
from tests.conftest import logged_in, wait_for


@pytest.fixture
def staff(transactional_db) -> Client:
    return logged_in("ops", is_staff=True)


def start_job(label: str) -> tuple[BaseBackup, threading.Thread, dict]:
    backup = BaseBackup.objects.create(label=label, trigger="dashboard")
    seen: dict = {}

    def work() -> None:
        tool = popen(["sleep", "60"], owner=job_key(backup), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen["tool"] = tool
        reporter = JobReporter(backup)
        reporter.step("copying files (pg_basebackup)")
        for i in range(600):
            reporter.progress(i, 600)
            time.sleep(0.1)

    def thread() -> None:
        try:
            run_job(backup, JobReporter(backup), work)
            seen["result"] = "returned"
        except JobCancelled as exc:
            seen["result"] = f"cancelled: {exc}"
        except Exception as exc:  # noqa: BLE001 - the test reports what happened
            seen["result"] = f"raised {exc!r}"
        finally:
            connection.close()

    runner = threading.Thread(target=thread, daemon=True)
    runner.start()
    wait_for(lambda: "tool" in seen and BaseBackup.objects.get(pk=backup.pk).progress_done > 0, 20,
             "the job to start its tool and report")
    return backup, runner, seen


def test_cancel_stops_the_tool_and_the_job_reads_cancelled(staff):
    backup, runner, seen = start_job("cancel-me")
    tool = seen["tool"]
    response = staff.post(f"/jobs/backup/{backup.pk}/cancel/", follow=True)
    assert "cancelled: its tools were stopped" in response.content.decode()
    assert tool.wait(10) == -9  # SIGKILLed with its process group
    runner.join(20)
    assert seen["result"].startswith("cancelled"), seen
    backup.refresh_from_db()
    assert backup.state == JobState.CANCELLED and backup.error.startswith("cancelled by ops")
    assert not procs.alive(tool.pid)
    page = staff.get(f"/backups/{backup.pk}/").content.decode()
    assert ">cancelled<" in page and 'id="cancel-job"' not in page  # nothing left to cancel
    # Cancelling again says so; the next job runs to the end.
    again = staff.post(f"/jobs/backup/{backup.pk}/cancel/", follow=True).content.decode()
    assert "is cancelled already: nothing to cancel" in again
    nxt = BaseBackup.objects.create(label="after-cancel")
    run_job(nxt, JobReporter(nxt), lambda: None)
    assert BaseBackup.objects.get(pk=nxt.pk).state == JobState.DONE


def test_cancel_a_queued_job_means_it_never_runs(staff):
    backup = BaseBackup.objects.create(label="queued")
    assert staff.post(f"/jobs/backup/{backup.pk}/cancel/").status_code == 302
    with pytest.raises(Exception, match="already cancelled"):
        run_job(backup, JobReporter(backup), lambda: None)
    assert BaseBackup.objects.get(pk=backup.pk).state == JobState.CANCELLED


def test_viewer_cannot_cancel(transactional_db):
    viewer = logged_in("viewer")
    backup = BaseBackup.objects.create(label="keep")
    response = viewer.post(f"/jobs/backup/{backup.pk}/cancel/")
    assert response.status_code == 403 and "needs a staff account" in response.content.decode()
    assert BaseBackup.objects.get(pk=backup.pk).state == JobState.QUEUED


def test_cancelling_a_chaos_run_cancels_the_jobs_it_runs(staff):
    """A chaos run takes its backup and restores in its own process: they go with it."""
    import os

    from chaos.models import ChaosRun
    from pitrsite.locks import HOST
    from restores.models import RestoreJob

    mine = dict(state=JobState.RUNNING, owner_host=HOST, owner_pid=os.getpid())
    run = ChaosRun.objects.create(current_step="restoring T 1/2", **mine)
    inner = RestoreJob.objects.create(target_kind="latest", trigger="chaos", current_step="planning", **mine)
    other = RestoreJob.objects.create(target_kind="latest", state=JobState.RUNNING, owner_host=HOST, owner_pid=1)
    assert staff.post(f"/jobs/chaos/{run.pk}/cancel/").status_code == 302
    assert ChaosRun.objects.get(pk=run.pk).state == JobState.CANCELLED
    assert RestoreJob.objects.get(pk=inner.pk).state == JobState.CANCELLED
    assert RestoreJob.objects.get(pk=other.pk).state == JobState.RUNNING  # another process's job is left alone


def test_a_failed_job_raises_its_step_and_reason_typed(transactional_db):
    """Issue 9: run_job re-raised a bare PitrError and callers read message prefixes. A domain error now comes
    out as StepFailed(step, reason), the original kept as its cause; a StepFailed of the work's own passes as is."""
    from pitrsite.errors import PlanError, StepFailed

    backup = BaseBackup.objects.create(label="typed", trigger="command")

    def work() -> None:
        JobReporter(backup).step("planning")
        raise PlanError("no backup ends before the target")

    with pytest.raises(StepFailed) as caught:
        run_job(backup, JobReporter(backup), work)
    assert (caught.value.step, caught.value.reason) == ("planning", "no backup ends before the target")
    assert isinstance(caught.value.__cause__, PlanError)
    backup.refresh_from_db()
    assert (backup.state, backup.error) == (JobState.FAILED, "failure planning (no backup ends before the target)")

    own = BaseBackup.objects.create(label="own-step", trigger="command")
    with pytest.raises(StepFailed) as caught:
        run_job(own, JobReporter(own), lambda: (_ for _ in ()).throw(StepFailed("copying files", "disk full")))
    assert caught.value.step == "copying files" and caught.value.__cause__ is None
