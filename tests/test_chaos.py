"""The chaos harness on the real fleet: every action, restores verified row for row, and a sabotaged run that fails.

The short run needs the Celery worker and beat under the supervisor (fleet.services' command lines) in the
test home, because one action SIGKILLs the worker that runs the WAL indexer; they are stopped afterwards.
"""
from __future__ import annotations

import hashlib
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from chaos.log import LoggedRow, load_log
from chaos.models import ChaosRun, Verdict
from chaos.moments import pick_moments
from chaos.params import ACTIONS, ChaosError, ChaosParams
from chaos.run import queue_chaos, run_chaos
from fleet import pg, services
from fleet.layout import Layout
from pitrsite import procs, runner
from pitrsite.jobs import JobReporter, JobState
from restores.models import RestoreJob
from tests.conftest import manage, subprocess_env

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def forget_chaos_rows(django_db_setup, django_db_blocker):
    """What the chaos runs here commit outside any test's transaction (their rows, their restores and backups,
    and the catalog rows that the runs, the worker and the manage.py subprocesses indexed) is removed at the
    end, so the tests that follow start from an empty catalog as they expect. The WAL stays in the archive:
    the next index pass finds it again."""
    yield
    from walcatalog.models import BaseBackup, RestorePoint, StorageCopy, Timeline, WalSegment

    with django_db_blocker.unblock():
        ChaosRun.objects.all().delete()
        RestoreJob.objects.filter(trigger="chaos").delete()
        BaseBackup.objects.filter(trigger="chaos").delete()
        for model in (StorageCopy, RestorePoint, WalSegment, Timeline):
            model.objects.all().delete()


def start_app_services(layout: Layout) -> list[str]:
    """Celery worker and beat, each under fleet.supervise, against the test database and fleet."""
    started = []
    for name in ("worker", "beat"):
        logfile = layout.logs / f"{name}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        runner.start_supervised(name, services.argv(name, layout), layout.run, logfile, cwd=layout.run,
                               env=subprocess_env())
        started.append(name)
        services.wait_ready(name, layout, logfile)
    return started


@pytest.fixture(scope="module")
def short_run(fleet, redis_server, django_db_setup, django_db_blocker):
    """One short chaos run with every action; the worker and beat it needs are stopped right after."""
    params = ChaosParams(writers=5, duration=45, interval=(1.5, 3.0), restores=2, actions=ACTIONS,
                         pause=(1.5, 2.5), statement_timeout=1.0, recovery_timeout=90, seed=4)
    layout = Layout.current()
    started: list[str] = []
    try:
        started = start_app_services(layout)
        with django_db_blocker.unblock():
            run = queue_chaos(params, trigger="command")
            run = run_chaos(run, JobReporter(run))
    finally:
        for name in reversed(started or ["beat", "worker"]):
            runner.stop_supervised(name, layout.run)
    return run


@pytest.mark.django_db
def test_short_chaos_run_is_exact(fleet, short_run):
    run = ChaosRun.objects.get(pk=short_run.pk)
    assert run.state == JobState.DONE, run.error
    assert run.verdict == Verdict.PASSED, run.summary

    # Every action happened, and the system came back from each on its own.
    assert {e["action"] for e in run.events} == set(ACTIONS), [e["action"] for e in run.events]
    for event in run.events:
        assert event["ok"] and event["recovered_at"] >= event["ended_at"] >= event["started_at"], event
    kill = next(e for e in run.events if e["action"] == "indexer_kill")
    assert kill["target"] == "worker" and kill["new_pid"] != kill["pid"]

    # At least two moments restored through the restore engine, each exact on every check.
    assert len(run.verifications) >= 2
    for check in run.verifications:
        assert check["ok"] and all(check["checks"].values()), check
        assert check["missing_count"] == 0 and check["extra_count"] == 0
        assert check["restored_rows"] == check["expected_rows"] > 0
        assert RestoreJob.objects.get(pk=check["restore_job"]).trigger == "chaos"

    # The log is complete and agrees with the primary, unknown outcomes included.
    header, rows = load_log(Path(run.run_dir) / "verification_log.jsonl")
    assert header["resolution"]["integrity_ok"] and len(rows) == run.writes_count > 100
    assert header["commit_lsns"]["commits_not_found"] == 0
    assert {r.writer for r in rows} == set(run.writer_ids)
    with pg.connect(fleet.layout.port("primary")) as conn:
        on_primary = {r[0] for r in conn.execute("SELECT id FROM test_data WHERE writer = ANY(%s)",
                                                 [run.writer_ids]).fetchall()}
    assert on_primary == {r.id for r in rows}
    report = json.loads((Path(run.run_dir) / "report.json").read_text())
    assert report["verdict"] == "passed" and report["passed"] == len(run.verifications)

    # The shared fleet is left as it was found.
    for role in ("primary", "standby", "capturer"):
        assert fleet.state(role) == "running", role


@pytest.mark.django_db
def test_an_inexact_restore_fails_the_run_naming_the_ids(fleet, short_run):
    """Sabotage: restore to T + 1 s but compare with the log at T. The command must fail and name the extra rows."""
    result = manage("chaos", "--writers", "3", "--duration", "8", "--actions", "none", "--restores", "1",
                    "--restore-offset", "1", "--json", check=False)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "failed" in result.stderr
    run = json.loads(result.stdout)
    assert run["verdict"] == "failed" and run["state"] == "failed"
    assert "restored moments differ from the log" in run["error"]
    check = run["verifications"][0]
    assert not check["ok"] and not check["checks"]["ids"] and not check["checks"]["end_lsn"]
    assert check["extra_count"] > 0 and check["extra_ids"], check
    # The ids named are exactly this run's rows committed in (T, T + 1 s].
    moment = datetime.fromisoformat(check["moment"])
    with pg.connect(fleet.layout.port("primary")) as conn:
        later = {r[0] for r in conn.execute(
            "SELECT id FROM test_data WHERE writer = ANY(%s) AND pg_xact_commit_timestamp(xmin) > %s "
            "AND pg_xact_commit_timestamp(xmin) <= %s", [run["writer_ids"], moment, moment + timedelta(seconds=1)])}
    assert (set(check["extra_ids"]) == set(sorted(later)[:len(check["extra_ids"])])
            and check["extra_count"] == len(later))


@pytest.mark.django_db
def test_demo_prints_the_verdict_the_dashboard_page_and_psql(fleet):
    result = manage("demo", "--duration", "6", "--restores", "1")
    out = result.stdout
    assert "verdict: passed: 1/1 restored moments exact" in out, out + result.stderr
    assert "exact:" in out and "missing 0, extra 0" in out
    assert "/chaos/" in out and "admin_password" in out
    psql_line = next(line for line in out.splitlines() if "psql" in line and "-p" in line)
    assert f"-p {fleet.layout.port('restore_target')}" in psql_line and "created_at <=" in psql_line


def test_a_write_that_did_not_commit_is_retried_under_the_same_seq(fleet, tmp_path):
    """An INSERT held past its deadline (a table lock) has an unknown outcome; the retry commits it, no seq is lost."""
    import threading
    import time

    from chaos.log import collect
    from chaos.writers import Watchdog, Writer
    from tests.conftest import wait_for

    port = fleet.layout.port("primary")
    with pg.connect(port) as conn:
        writer_id = conn.execute("SELECT coalesce(max(writer), 0) + 1000 FROM test_data").fetchone()[0]
    stop, watchdog = threading.Event(), Watchdog()
    watchdog.start()
    writer = Writer(writer_id, "chaos-test-retry", tmp_path / f"writes-{writer_id}.jsonl", port, stop, watchdog,
                    mean_pause=0.02, statement_timeout=1.0, rng=random.Random(3))
    writer.start()
    try:
        wait_for(lambda: writer.stats.committed >= 5, 30, "the writer's first commits")
        with pg.connect(port, autocommit=False) as locker:
            # Conflicts with INSERT's ROW EXCLUSIVE lock: the writer's next INSERT waits, then times out.
            locker.execute("LOCK TABLE test_data IN SHARE ROW EXCLUSIVE MODE")
            wait_for(lambda: writer.stats.unknown >= 1, 30, "the writer to give up on a blocked INSERT")
            time.sleep(0.5)
            locker.rollback()
        wait_for(lambda: writer.stats.resolved_by_retry >= 1, 30, "the retry of the blocked write to commit")
        count = writer.stats.committed
        wait_for(lambda: writer.stats.committed >= count + 5, 30, "more commits after the retry")
    finally:
        stop.set()
        writer.join(10)
        watchdog.stop()
    assert writer.fatal is None, writer.fatal
    rows, report = collect(tmp_path, [writer_id], port, "chaos-test-retry")
    assert report["integrity_ok"], report["problems"]
    assert report["unknown_attempts"] >= 1 and writer.stats.resolved_by_lookup == 0
    assert sorted(r.seq for r in rows) == list(range(1, len(rows) + 1)), "a retried write must keep its seq"
    assert any(r.how == "retry" for r in rows)


def test_moments_where_wal_order_disagrees_with_commit_time_are_set_aside():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def row(i: int, micros: int, lsn: int) -> LoggedRow:
        at = t0 + timedelta(microseconds=micros)
        return LoggedRow(id=i, writer=1, seq=i, xid=100 + i, created_at=at, committed_at=at, how="direct",
                         commit_lsn=lsn)

    # Rows 2 and 3 took their commit times in one order and wrote their commit records in the other.
    rows = [row(1, 10, 1000), row(2, 20, 3000), row(3, 30, 2000), row(4, 40, 4000)]
    moments, stats = pick_moments(rows, 10, t0, t0 + timedelta(seconds=1), random.Random(1))
    chosen = {m.at for m in moments}
    assert stats["set_aside_reordered"] == 1
    assert rows[1].committed_at not in chosen  # T between the two: no restore can match "commit time <= T"
    assert {rows[0].committed_at, rows[2].committed_at, rows[3].committed_at} <= chosen


@pytest.mark.parametrize("params, message", [
    ({"writers": 0}, "writers must be from 1 to 32"),
    ({"interval": "60"}, "is not MIN-MAX seconds"),
    ({"interval": "60-30"}, "need 0 < MIN <= MAX"),
    ({"actions": "capturer_kill,reboot"}, "unknown chaos action 'reboot'"),
    ({"restores": "many"}, "is not a number"),
])
def test_bad_parameters_are_one_line_errors(params, message):
    with pytest.raises(ChaosError, match=message) as info:
        ChaosParams.from_dict(params)
    assert "\n" not in str(info.value)


@pytest.mark.django_db
def test_indexer_kill_needs_the_supervised_services(fleet):
    if services.status("worker")["state"] == "running":
        pytest.fail("this test expects the worker stopped: the chaos services fixture did not clean up")
    runs = ChaosRun.objects.count()
    with pytest.raises(ChaosError, match="needs the Celery worker and beat"):
        queue_chaos({"actions": "indexer_kill"})
    assert ChaosRun.objects.count() == runs, "a run that cannot start must not become a row"


@pytest.mark.django_db(transaction=True)
def test_celery_task_inside_the_worker_kills_beat_not_itself(fleet, redis_server):
    """Queued to the supervised worker, the run's indexer_kill must hit beat: the worker is where it lives."""
    from chaos.tasks import run_chaos as run_chaos_task
    from tests.conftest import wait_for

    layout = Layout.current()
    try:
        start_app_services(layout)
        worker_pid = services.status("worker")["pid"]
        run = queue_chaos({"writers": 3, "duration": 12, "interval": "2-3", "restores": 1, "actions": "indexer_kill",
                           "statement_timeout": 1.0, "recovery_timeout": 60}, trigger="celery")
        run_chaos_task.delay(run.pk)
        wait_for(lambda: ChaosRun.objects.get(pk=run.pk).state in (JobState.DONE, JobState.FAILED,
                                                                   JobState.INTERRUPTED), 240, "the chaos task to end")
        run.refresh_from_db()
        assert run.state == JobState.DONE and run.verdict == Verdict.PASSED, f"{run.error} {run.summary}"
        assert run.owner_pid != worker_pid and procs.descends_from(run.owner_pid, worker_pid)
        kills = [e for e in run.events if e["action"] == "indexer_kill"]
        assert kills and all(e["target"] == "beat" and e["ok"] for e in kills), run.events
        assert services.status("worker")["pid"] == worker_pid, "the worker running the chaos task was killed"
    finally:
        for name in ("beat", "worker"):
            runner.stop_supervised(name, layout.run)


@pytest.mark.django_db
def test_bitrot_and_stray_history_are_caught_and_repaired(fleet):
    """Issue 10: damage the archive, restore to the latest WAL: refused naming it, or exact; then it is undone."""
    from fleet.status import fleet_check
    from tests.conftest import wait_for
    from walcatalog.models import WalSegment

    wait_for(lambda: not fleet_check(fleet), 120, "the fleet to be ready (capturer streaming through its slot)")
    params = ChaosParams(writers=3, duration=30, interval=(3.0, 5.0), restores=1, actions=("bitrot", "stray"),
                         statement_timeout=1.0, recovery_timeout=120, seed=10)
    run = queue_chaos(params, trigger="command")
    run = run_chaos(run, JobReporter(run))
    events = {e["action"]: e for e in run.events}
    assert set(events) == {"bitrot", "stray"}, run.events
    for event in events.values():
        assert event["caught"] and event["ok"], json.dumps(event)
        assert event["how"] in ("refused", "exact"), event
        assert event.get("restore_job") or event["how"] == "refused", event  # a planner refusal makes no job
    assert run.state == JobState.DONE and run.verdict == Verdict.PASSED, f"{run.error} {run.summary}"

    # Repaired: the rotten segment has its catalogued checksum and mtime again; the stray file is gone.
    archive = fleet.layout.archive
    segment = WalSegment.objects.get(name=events["bitrot"]["target"], is_partial=False)
    path = archive / segment.name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == segment.sha256
    assert path.stat().st_mtime_ns == segment.mtime_ns
    assert not (archive / events["stray"]["target"]).exists()
