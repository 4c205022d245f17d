"""Restore drills on the real fleet: pass when the copy is whole, fail (with the reason) when it is not."""
from __future__ import annotations

import shutil
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from fleet import pg
from pitrsite import locks
from pitrsite.jobs import JobReporter, JobState
from restores import drill
from restores.models import DRILL_TRIGGER, DrillVerdict, RestoreJob
from tests.restore_helpers import (
    empty_catalog,
    restored_ids,
    rot_index_page,
    wait_captured,
    write_rows,
)
from walcatalog import walnames
from walcatalog.backups import backup_dir, queue_backup, run_backup

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


def viewer() -> Client:
    client = Client()
    client.force_login(User.objects.get_or_create(username="drill-viewer")[0])
    return client


def shown() -> tuple[dict[str, float], str, dict]:
    """What /metrics, the overview page and overview.json say about drills, read as a user would."""
    metrics = Client().get("/metrics")  # the test client is loopback: no login needed
    assert metrics.status_code == 200
    found = {s.name: s.value for f in text_string_to_metric_families(metrics.content.decode())
             for s in f.samples if s.name.startswith("pitr_restore_drill_")}
    client = viewer()
    page = client.get("/")
    assert page.status_code == 200
    return found, page.content.decode(), client.get("/overview.json").json()["drill"]


@pytest.fixture(scope="module")
def backed_up(fleet, django_db_setup, django_db_blocker):
    """A verified backup, then rows written after it (some in the .partial): what a drill must bring back."""
    with django_db_blocker.unblock(), pg.connect(fleet.layout.port("primary")) as conn:
        backup = queue_backup("zstd")
        run_backup(backup, JobReporter(backup))
        assert backup.state == JobState.DONE, backup.error
        rows = write_rows(conn, 10, "drill", switch_every=4)
        wait_captured()
        yield rows
        empty_catalog()  # committed outside the tests' transactions: later modules expect an empty catalog


@pytest.fixture
def rotten_backup(fleet, backed_up, db):
    """The newest backup holds a static table whose index page rotted inside the backup file."""
    from walcatalog.models import BaseBackup

    with pg.connect(fleet.layout.port("primary")) as conn:
        conn.execute("DROP TABLE IF EXISTS drill_static")
        # No writes (autovacuum off, frozen) after the backup: replay never rewrites the rotten page.
        conn.execute("CREATE TABLE drill_static (id int PRIMARY KEY, t text) WITH (autovacuum_enabled = off)")
        conn.execute("INSERT INTO drill_static SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
        conn.execute("VACUUM (FREEZE, ANALYZE) drill_static")
        index_path = conn.execute("SELECT pg_relation_filepath('drill_static_pkey')").fetchone()[0]
        backup = queue_backup("none")
        run_backup(backup, JobReporter(backup))
        assert backup.state == JobState.DONE, backup.error
        rot_index_page(backup, index_path)
        yield backup
        conn.execute("DROP TABLE drill_static")
    # Other tests must never restore from it.
    RestoreJob.objects.filter(backup=backup).delete()
    BaseBackup.objects.filter(pk=backup.pk).delete()
    shutil.rmtree(backup_dir(backup), ignore_errors=True)


def test_drill_passes_on_a_healthy_fleet(fleet, primary, backed_up, db):
    job = drill.new_drill("test")
    job = drill.run_drill(job, JobReporter(job))
    assert job.drill_verdict == DrillVerdict.PASSED, job.drill_detail
    assert job.state == JobState.DONE and job.trigger == DRILL_TRIGGER
    detail = job.drill_detail
    assert detail["end_reached"] is True
    assert job.final_lsn >= walnames.parse_lsn(detail["expected_end_lsn"])
    assert detail["amcheck"]["exit"] == 0 and detail["amcheck"]["seconds"] >= 0
    assert "--heapallindexed" in detail["amcheck"]["options"]
    # the newest moment: every row written before the drill began is in the copy
    assert {row.id for row in backed_up} <= restored_ids(fleet)
    with pg.connect(fleet.layout.port("restore_target")) as conn:
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'").fetchone()[0] == 1
    # the same copy, held to an end one byte further than recovery reached, fails and says where it ended
    verdict, reason = drill.check_copy(job, drill.Expected(job.final_lsn + 1, "its segment"), JobReporter(job), {})
    assert verdict == DrillVerdict.FAILED
    assert reason == (f"recovery ended at {job.final_lsn_text}, before the end of the staged WAL "
                      f"({walnames.format_lsn(job.final_lsn + 1)} in its segment)")

    metrics, page, facts = shown()
    assert metrics["pitr_restore_drill_last_verdict"] == 1
    assert metrics["pitr_restore_drill_last_success_timestamp_seconds"] == pytest.approx(job.finished_at.timestamp())
    assert 0 <= metrics["pitr_restore_drill_last_age_seconds"] < 600
    assert facts["verdict"] == "passed" and facts["last_id"] == job.pk and not facts["warning"]
    assert f'#{job.pk}</a> <span class="state state-done">passed</span>' in page


def test_drill_fails_on_a_rotten_backup(fleet, rotten_backup):
    job = drill.new_drill("test")
    job = drill.run_drill(job, JobReporter(job))
    assert job.backup_id == rotten_backup.pk
    assert job.drill_verdict == DrillVerdict.FAILED, job.drill_detail
    assert job.state == JobState.FAILED
    detail = job.drill_detail
    assert detail["end_reached"] is True  # the WAL was fine: amcheck is what caught it
    assert detail["amcheck"]["exit"] == drill.AMCHECK_CORRUPTION
    assert detail["reason"].startswith('pg_amcheck found corruption: btree index "pitr.public.drill_static_pkey": '
                                       'ERROR:  invalid page in block 1'), detail["reason"]
    assert job.error == detail["reason"]

    metrics, page, facts = shown()
    assert metrics["pitr_restore_drill_last_verdict"] == 0
    assert "pitr_restore_drill_last_success_timestamp_seconds" not in metrics  # none passed in this test
    assert facts["verdict"] == "failed" and facts["warning"].startswith(f"the last restore drill (#{job.pk}) failed")
    assert f'#{job.pk}</a> <span class="state state-failed">failed</span>' in page
    assert 'id="drill-warning"' in page and "drill_static_pkey" in page
    detail = viewer().get(f"/restores/{job.pk}/").content.decode()
    assert '<dd id="drill"><span class="state state-failed">failed</span> pg_amcheck found corruption' in detail


@pytest.fixture
def bindir_without_amcheck() -> Path:
    """The PostgreSQL binaries without pg_amcheck, where the postgres OS user can reach them (not pytest's tmp)."""
    bindir = Path(tempfile.mkdtemp(prefix="pitr-bin-"))
    bindir.chmod(0o755)
    yield bindir
    shutil.rmtree(bindir, ignore_errors=True)


def test_drill_that_cannot_run_pg_amcheck_fails(fleet, backed_up, db, settings, bindir_without_amcheck):
    from fleet import pg as fleet_pg

    bindir = bindir_without_amcheck  # the restore works, the check cannot run
    for tool in fleet_pg.bindir().iterdir():
        if tool.name != "pg_amcheck":
            (bindir / tool.name).symlink_to(tool)
    settings.PITR_PG_BINDIR = str(bindir)
    job = drill.new_drill("test")
    job = drill.run_drill(job, JobReporter(job))
    assert job.promoted_at is not None  # the restore itself went through
    assert (job.drill_verdict, job.state) == (DrillVerdict.FAILED, JobState.FAILED)
    assert job.error == f"the checks failed: pg_amcheck not found in {bindir}: install the PostgreSQL server " \
                        "package or set PITR_PG_BINDIR"


def test_drill_refused_while_a_restore_runs_is_skipped_not_queued(fleet, backed_up, db):
    with locks.RESTORE.held():  # what a running restore holds
        job = drill.new_drill("test")
        job = drill.run_drill(job, JobReporter(job))
    assert job.drill_verdict == DrillVerdict.SKIPPED
    assert job.state == JobState.FAILED and job.finished_at is not None
    assert job.error.startswith("skipped: another restore is running (pid ")
    metrics, _, facts = shown()
    assert "pitr_restore_drill_last_verdict" not in metrics and facts["verdict"] is None  # proves nothing


def test_drill_during_a_chaos_run_is_skipped(db, no_fleet):
    from pitrsite import locks

    job = drill.new_drill("test")
    with locks.CHAOS.held():  # what a running chaos run holds
        job = drill.run_drill(job, JobReporter(job))
    assert (job.drill_verdict, job.state) == (DrillVerdict.SKIPPED, JobState.FAILED)
    assert job.error.startswith("skipped: another chaos run is running (pid "), job.error
    assert job.started_at is None  # the restore target was never touched


def test_stale_drill_warns(db, no_fleet, settings):
    settings.PITR_DRILL_INTERVAL = 3600
    old = RestoreJob.objects.create(target_kind="latest", trigger=DRILL_TRIGGER, state=JobState.DONE,
                                    drill_verdict=DrillVerdict.PASSED,
                                    finished_at=timezone.now() - timedelta(hours=2, minutes=30))
    metrics, page, facts = shown()
    assert metrics["pitr_restore_drill_last_verdict"] == 1
    assert metrics["pitr_restore_drill_last_age_seconds"] == pytest.approx(9000, abs=60)
    assert facts["warning"].startswith(f"the last restore drill (#{old.pk}) is 2.5 h old, over twice")
    assert 'id="drill-warning"' in page
    settings.PITR_DRILL_INTERVAL = 4 * 3600
    assert not shown()[2]["warning"]


