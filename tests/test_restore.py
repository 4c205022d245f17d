"""Point-in-time restore to every target kind, compared row for row with the primary."""
from __future__ import annotations

from datetime import timedelta

import pytest

from pitrsite.jobs import JobReporter, JobState
from restores.engine import run_restore
from restores.models import RestoreJob
from restores.planner import PlanError, RestoreTarget, plan
from restores.service import queue_restore
from tests.restore_helpers import (
    empty_catalog, newest_commit, primary_ids_committed, restored_ids, wait_captured, write_rows,
)
from walcatalog import walnames
from walcatalog.backups import queue_backup, run_backup
from walcatalog.models import BaseBackup, WalSegment

pytestmark = [pytest.mark.fleet, pytest.mark.django_db]


@pytest.fixture(scope="module")
def history(fleet, django_db_setup, django_db_blocker):
    """A backup, then 40 single-row commits over several segments; the last ones stay in the .partial."""
    from fleet import pg
    from restores.engine import refresh_catalog

    with django_db_blocker.unblock(), pg.connect(fleet.layout.port("primary")) as conn:
        backup = queue_backup("zstd")
        run_backup(backup, JobReporter(backup))
        before = write_rows(conn, 5, "restore-before", switch_every=5)
        middle = write_rows(conn, 15, "restore-middle", switch_every=5)
        conn.execute("SELECT pg_create_restore_point('pitr_test_point')")
        after = write_rows(conn, 15, "restore-after", switch_every=5)
        tail = write_rows(conn, 5, "restore-tail")  # no switch: these live in the .partial
        wait_captured()
        refresh_catalog()
        yield {"backup": backup, "rows": before + middle + after + tail, "point_after": middle[-1],
               "tail": tail, "conn_port": fleet.layout.port("primary")}
        empty_catalog()  # committed outside the tests' transactions: later modules expect an empty catalog


def restore(target: RestoreTarget) -> RestoreJob:
    job = queue_restore(target)
    job = run_restore(job, JobReporter(job))
    assert job.state == JobState.DONE, job.error
    return job


def test_time_inclusive_at_exact_commit(fleet, primary, history):
    row = history["rows"][12]
    job = restore(RestoreTarget.from_options(time=row.committed_at.isoformat()))
    restored = restored_ids(fleet)
    assert restored == primary_ids_committed(primary, row.committed_at)
    assert row.id in restored and history["rows"][13].id not in restored
    assert job.promoted_at is not None and job.final_timeline > 1


def test_time_exclusive_at_exact_commit(fleet, primary, history):
    row = history["rows"][12]
    restore(RestoreTarget.from_options(time=row.committed_at.isoformat(), exclusive=True))
    restored = restored_ids(fleet)
    assert restored == primary_ids_committed(primary, row.committed_at, exclusive=True)
    assert row.id not in restored and history["rows"][11].id in restored


def test_lsn_target(fleet, primary, history):
    row = history["rows"][20]
    job = restore(RestoreTarget.from_options(lsn=walnames.format_lsn(row.lsn_after)))
    assert restored_ids(fleet) == primary_ids_committed(primary, row.committed_at)
    assert job.final_lsn >= row.lsn_after


def test_xid_target(fleet, primary, history):
    row = history["rows"][8]
    restore(RestoreTarget.from_options(xid=str(row.xid)))
    assert restored_ids(fleet) == primary_ids_committed(primary, row.committed_at)


def test_named_restore_point(fleet, primary, history):
    job = restore(RestoreTarget.from_options(name="pitr_test_point"))
    assert restored_ids(fleet) == primary_ids_committed(primary, history["point_after"].committed_at)
    assert "pitr_test_point" in job.plan["stop_reason"]


def test_immediate_is_the_backup_itself(fleet, primary, history):
    job = restore(RestoreTarget.from_options(immediate=True))
    first = history["rows"][0]
    assert restored_ids(fleet) == primary_ids_committed(primary, first.committed_at, exclusive=True)
    assert job.final_lsn == history["backup"].stop_lsn and job.wal_files == 0


def test_latest_has_every_captured_row(fleet, primary, history):
    job = restore(RestoreTarget.from_options(latest=True))
    last = history["rows"][-1]
    assert restored_ids(fleet) >= primary_ids_committed(primary, last.committed_at)
    assert job.uses_partial


def test_target_inside_the_partial_segment(fleet, primary, history):
    # Rows of its own, just written: the module's tail rows may sit in a completed segment by now
    # (background WAL fills a 1 MiB segment in the minute the earlier tests take).
    row = write_rows(primary, 3, "restore-partial")[1]
    wait_captured()
    job = restore(RestoreTarget.from_options(time=row.committed_at.isoformat()))
    assert job.uses_partial and job.wal_last.endswith(".partial")
    assert restored_ids(fleet) == primary_ids_committed(primary, row.committed_at)
    archive_partial = fleet.layout.archive / job.wal_last
    assert archive_partial.exists(), "the .partial in the archive must never be moved"


def test_newest_captured_commit_is_a_valid_target(fleet, primary, history):
    newest = newest_commit()
    target = RestoreTarget.from_options(time=newest.isoformat())
    # With no later commit in the catalog, PostgreSQL could not end recovery at a time target: the
    # planner stops by LSN right after that commit record. (Checked on the catalog as it is: the
    # restore below re-indexes first, and a background commit may have arrived since.)
    assert plan(target).recovery["recovery_target_lsn"]
    restore(target)
    assert restored_ids(fleet) == primary_ids_committed(primary, newest)


def test_restore_command_is_a_plain_copy(fleet, history):
    restore(RestoreTarget.from_options(time=history["rows"][3].committed_at.isoformat()))
    conf = (fleet.layout.datadir("restore_target") / "pitrsite.node.conf").read_text()
    assert "restore_command" not in conf, "recovery settings must be dropped after promotion"


def test_a_target_replays_without_fsync_and_is_promoted_with_it_on(fleet, history):
    job = restore(RestoreTarget.from_options(time=history["rows"][6].committed_at.isoformat()))
    steps = [step["name"] for step in job.steps]
    assert steps.index("replaying WAL") < steps.index("syncing the copy to disk") < steps.index("promoting")
    from fleet import pg

    with pg.connect(fleet.layout.port("restore_target")) as conn:
        assert conn.execute("SHOW fsync").fetchone()[0] == "on"
        # Not a setting of this session only: the file PostgreSQL reloads has no fsync=off left.
        assert not conn.execute("SELECT 1 FROM pg_file_settings WHERE name = 'fsync' AND setting = 'off'"
                                " AND applied").fetchall()
    assert "fsync" not in (fleet.layout.datadir("restore_target") / "pitrsite.node.conf").read_text()


def test_a_replay_long_enough_is_promoted_at_its_target_without_a_blocking_checkpoint(fleet, primary, history,
                                                                                      monkeypatch):
    """Replay slowed to 0.3 s a segment, and the promotion armed from the start of replay (these segments
    hold a few rows each, too few for the usual arming point): fsync goes back on and the promotion is asked
    for ahead, and PostgreSQL promotes the moment it reaches the target (no pause, no end-of-recovery
    checkpoint to wait for); the rows are still exactly the target's."""
    from restores import recovery

    monkeypatch.setattr(recovery, "RESTORE_COMMAND", "sleep 0.3 && " + recovery.RESTORE_COMMAND)
    monkeypatch.setattr(recovery.Recovery, "arm_at", lambda self, the_plan: 0)
    row = history["rows"][25]
    log = fleet.layout.logfile("restore_target")
    offset = log.stat().st_size if log.exists() else 0
    job = restore(RestoreTarget.from_options(time=row.committed_at.isoformat()))
    assert job.wal_files >= 3
    assert restored_ids(fleet) == primary_ids_committed(primary, row.committed_at)
    lines = log.read_bytes()[offset:].decode()
    # The pause loop finds the request on its first look (it logs "pausing ..." before it), and the promotion
    # is PostgreSQL's fast one: its checkpoint is requested, not waited for.
    assert "received promote request" in lines, lines
    assert "end-of-recovery immediate wait" not in lines and "checkpoint starting: force" in lines
    assert lines.index('parameter "fsync" removed') < lines.index("received promote request")
    from fleet import pg

    with pg.connect(fleet.layout.port("restore_target")) as conn:
        assert conn.execute("SHOW fsync").fetchone()[0] == "on"


def test_the_latest_wal_replays_with_fsync_on(fleet, history):
    job = restore(RestoreTarget.from_options(latest=True))
    assert "syncing the copy to disk" not in [step["name"] for step in job.steps]
    assert job.plan["recovery"]["recovery_target_action"] == "promote"


@pytest.mark.parametrize("options, message", [
    ({}, "no target given"),
    ({"latest": True, "immediate": True}, "two or more targets"),
    ({"time": "2026-11-27 14:03:27"}, "has no time zone"),
    ({"time": "yesterday"}, "is not ISO 8601"),
    ({"lsn": "0/XYZ"}, "malformed LSN"),
    ({"xid": "abc"}, "is not a number"),
    ({"latest": True, "exclusive": True}, "--exclusive applies only"),
])
def test_malformed_targets_are_rejected_in_one_line(options, message):
    with pytest.raises(PlanError, match=message) as info:
        RestoreTarget.from_options(**options)
    assert "\n" not in str(info.value)


def assert_rejected(fleet, target: RestoreTarget, message: str) -> str:
    jobs, pid = RestoreJob.objects.count(), fleet.pid("restore_target")
    with pytest.raises(PlanError, match=message) as info:
        queue_restore(target)
    assert RestoreJob.objects.count() == jobs, "a rejected target must not become a job"
    assert fleet.pid("restore_target") == pid, "a rejected target must not touch the restore target"
    assert "\n" not in str(info.value)
    return str(info.value)


def test_rejects_time_after_newest_commit(fleet, history):
    # A day ahead: no commit captured before the check (the planner re-indexes first) can reach it.
    text = assert_rejected(fleet, RestoreTarget.from_options(time=(newest_commit() + timedelta(days=1)).isoformat()),
                           "after the newest captured commit")
    assert newest_commit().isoformat() in text


def test_rejects_time_before_oldest_backup(fleet, history):
    oldest = BaseBackup.objects.filter(state=JobState.DONE).order_by("stop_lsn").first()
    assert_rejected(fleet, RestoreTarget.from_options(time=(oldest.start_time - timedelta(hours=1)).isoformat()),
                    "before the end of the oldest usable backup")


def test_rejects_lsn_after_captured_wal(fleet, history):
    assert_rejected(fleet, RestoreTarget.from_options(lsn="FF/0"), "after the end of the captured WAL")


def test_rejects_unknown_restore_point_and_backup(fleet, history):
    assert_rejected(fleet, RestoreTarget.from_options(name="no_such_point"), "no restore point named")
    assert_rejected(fleet, RestoreTarget.from_options(latest=True, backup_id=999999), "does not exist")


def test_rejects_a_gap_naming_the_segment(fleet, history):
    row = history["rows"][25]
    target = RestoreTarget.from_options(time=row.committed_at.isoformat())
    needed = plan(target).segments
    hole = needed[len(needed) // 2]
    # The catalog loses the segment (rolled back with the test); the planner alone must refuse.
    # queue_restore would re-index the file, which is still in the archive, and heal the gap.
    WalSegment.objects.filter(pk=hole.pk).delete()
    with pytest.raises(PlanError, match="WAL gap") as info:
        plan(target)
    assert hole.name in str(info.value) and "\n" not in str(info.value)


def test_rejects_a_segment_held_nowhere(fleet, history):
    """Catalogued but lost locally and never copied to storage: refused before any job exists."""
    row = history["rows"][25]
    target = RestoreTarget.from_options(time=row.committed_at.isoformat())
    needed = plan(target).segments
    lost = needed[len(needed) // 2]
    WalSegment.objects.filter(pk=lost.pk).update(in_local_archive=False)  # rolled back with the test
    with pytest.raises(PlanError, match="missing from the archive and from storage") as info:
        plan(target)
    assert lost.name in str(info.value)


def test_rejects_when_no_backup_is_verified(fleet, history):
    BaseBackup.objects.update(manifest_verified=False)  # rolled back with the test
    assert_rejected(fleet, RestoreTarget.from_options(latest=True), "no verified base backup")


@pytest.mark.parametrize("compression", ["none", "gzip", "lz4", "zstd"])
def test_each_compression_restores(fleet, primary, history, compression):
    backup = queue_backup(compression)
    run_backup(backup, JobReporter(backup))
    assert backup.restorable and backup.size_stored > 0
    job = restore(RestoreTarget.from_options(immediate=True, backup_id=backup.pk))
    assert job.backup_id == backup.pk
    assert restored_ids(fleet) == primary_ids_committed(primary, backup.start_time, exclusive=True)


def test_queueing_runs_no_index_pass_and_the_job_plans_what_was_captured_since(fleet, primary, history):
    """The request that queues a restore reads the catalog as it is (no pg_waldump in a web request); a
    moment committed since the last pass is let through, and the job indexes it and restores it exactly."""
    from django.db.models import Max

    row = write_rows(primary, 1, "queued-before-indexing")[0]
    wait_captured()
    indexed = WalSegment.objects.aggregate(n=Max("scanned_to"))["n"]
    job = queue_restore(RestoreTarget.from_options(time=row.committed_at.isoformat()))
    assert WalSegment.objects.aggregate(n=Max("scanned_to"))["n"] == indexed  # nothing was indexed
    job = run_restore(job, JobReporter(job))
    assert job.state == JobState.DONE, job.error
    assert row.id in restored_ids(fleet)
    assert restored_ids(fleet) == primary_ids_committed(primary, row.committed_at)
