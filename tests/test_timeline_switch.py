"""Restore across a timeline switch: the standby is promoted and capture follows it.

Runs on a private second fleet (settings overridden for the test), so the
shared session fleet keeps its single timeline.
"""
from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from django.test import override_settings

from fleet import pg
from fleet.local import LocalDriver
from pitrsite import procs, runner
from pitrsite.jobs import JobReporter, JobState
from restores.engine import run_restore
from restores.service import queue_restore
from restores.targets import RestoreTarget
from tests.conftest import wait_for
from tests.restore_helpers import empty_catalog, primary_ids_committed, restored_ids, write_rows
from walcatalog import walnames
from walcatalog.backups import queue_backup, run_backup
from walcatalog.indexer import index_archive
from walcatalog.models import Timeline

pytestmark = [pytest.mark.fleet, pytest.mark.django_db]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def second_fleet(fleet):
    home = Path(tempfile.mkdtemp(prefix="pitr-tl-"))
    home.chmod(0o755)
    overrides = override_settings(PITR_HOME=home, PITR_WAL_ARCHIVE=home / "wal_archive",
                                  PITR_BACKUP_DIR=home / "backups", PITR_PRIMARY_PORT=free_port(),
                                  PITR_STANDBY_PORT=free_port(), PITR_RESTORE_PORT=free_port())
    with overrides:
        # The catalog describes one cluster: start this test's from empty (rolled back afterwards).
        empty_catalog()
        driver = LocalDriver()
        driver.up()
        try:
            yield driver
        finally:
            for role in ("capturer", "standby", "restore_target", "primary"):
                driver.stop(role, mode="immediate") if role != "capturer" else driver.stop(role)
            shutil.rmtree(home, ignore_errors=True)


def capture_lag(conn) -> int | None:
    row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn) FROM pg_stat_replication "
                       "WHERE application_name = 'pg_receivewal'").fetchone()
    return None if row is None or row[0] is None else int(row[0])  # flush_lsn is NULL until its first reply


def fail_over(driver: LocalDriver) -> None:
    """Promote the standby, retire the old primary, and point the capturer at the new primary."""
    with pg.connect(driver.layout.port("primary")) as old:
        goal = old.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
    with pg.connect(driver.layout.port("standby")) as new:
        wait_for(lambda: new.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [goal]).fetchone()[0],
                 30, "the standby to replay everything")
    driver.stop("capturer")
    driver.stop("primary")
    pg.run([pg.tool("pg_ctl"), "-D", str(driver.layout.datadir("standby")), "-w", "-s", "promote"],
           step="promoting the standby")
    port = driver.layout.port("standby")
    with pg.connect(port, dbname="postgres") as conn:
        conn.execute("SELECT pg_create_physical_replication_slot('pitr_slot', true)")
    account = pg.server_account()
    runner.start_supervised("capturer", [
        pg.tool("pg_receivewal"), "-h", "127.0.0.1", "-p", str(port), "-U", "replicator", "--no-password",
        "-D", str(driver.layout.archive), "--slot=pitr_slot", "--synchronous"],
        driver.layout.run, driver.layout.logfile("capturer"), user=account.pw_name if account else None,
        env=pg.libpq_env())


def restore(target: RestoreTarget):
    job = queue_restore(target)
    job = run_restore(job, JobReporter(job))
    assert job.state == JobState.DONE, job.error
    return job


def test_restore_after_a_timeline_switch(second_fleet):
    driver = second_fleet
    backup = queue_backup("zstd")
    run_backup(backup, JobReporter(backup))
    with pg.connect(driver.layout.port("primary")) as conn:
        before = write_rows(conn, 6, "tl1", switch_every=3)
    fail_over(driver)
    with pg.connect(driver.layout.port("standby")) as conn:
        after = write_rows(conn, 6, "tl2", switch_every=3)
        wait_for(lambda: capture_lag(conn) == 0, 30, "the capturer to follow the new primary")
        index_archive()
        assert (driver.layout.archive / "00000002.history").exists()
        tl2 = Timeline.objects.get(tli=2)
        assert tl2.parent_tli == 1 and tl2.switch_lsn is not None

        target = after[3].committed_at
        job = restore(RestoreTarget.from_options(time=target.isoformat()))
        assert job.plan["timeline"] == 2 and "00000002.history" in job.plan["history"]
        assert restored_ids(driver) == primary_ids_committed(conn, target)
        assert job.final_timeline == 3

        # The old timeline is still reachable on request, up to its end.
        old_target = before[4].committed_at
        job = restore(RestoreTarget.from_options(time=old_target.isoformat(), timeline="1"))
        assert restored_ids(driver) == primary_ids_committed(conn, old_target)
        assert walnames.segment_of_lsn(job.final_lsn, backup.segment_size) <= \
            walnames.segment_of_lsn(tl2.switch_lsn, backup.segment_size)
