"""Restore drills on the real fleet: pass when the copy is whole, fail (with the reason) when it is not."""
from __future__ import annotations

import json
import sys
import subprocess

import pytest

from fleet import pg
from pitrsite.jobs import JobReporter, JobState, exclusive
from restores import drill
from restores.models import DRILL_TRIGGER, DrillVerdict, RestoreJob
from tests.conftest import PROJECT, manage, subprocess_env, wait_for
from tests.restore_helpers import empty_catalog, restored_ids, wait_captured, write_rows
from walcatalog.backups import queue_backup, run_backup

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


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


def rot_index_page(backup, index_path: str) -> None:
    """Overwrite page 1 of an index file inside the backup's uncompressed base.tar: bit rot after verification.

    pg_verifybackup passed when the backup was taken; nothing re-reads the bytes until a restored
    server reads that page. With data checksums on, the page's checksum no longer matches.
    """
    import tarfile

    from walcatalog.backups import archive_file, backup_dir

    path = archive_file(backup_dir(backup), "base")
    with tarfile.open(path) as tar:
        member = tar.getmember(index_path)
    assert member.size >= 2 * 8192, f"{index_path} has no page 1"
    with open(path, "r+b") as fh:
        fh.seek(member.offset_data + 8192 + 512)  # inside page 1, past its header
        fh.write(b"\xde\xad" * 256)


@pytest.fixture
def rotten_backup(fleet, backed_up, transactional_db):
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


def test_drill_passes_on_a_healthy_fleet(fleet, primary, backed_up, transactional_db):
    job = drill.new_drill("test")
    job = drill.run_drill(job, JobReporter(job))
    assert job.drill_verdict == DrillVerdict.PASSED, job.drill_detail
    assert job.state == JobState.DONE and job.trigger == DRILL_TRIGGER
    detail = job.drill_detail
    assert detail["end_reached"] is True
    assert job.final_lsn >= pg_lsn(detail["expected_end_lsn"])
    assert detail["amcheck"]["exit"] == 0 and detail["amcheck"]["seconds"] >= 0
    assert "--heapallindexed" in detail["amcheck"]["options"]
    # the newest moment: every row written before the drill began is in the copy
    assert {row.id for row in backed_up} <= restored_ids(fleet)
    with pg.connect(fleet.layout.port("restore_target")) as conn:
        assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'").fetchone()[0] == 1


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


def pg_lsn(text: str) -> int:
    from walcatalog import walnames

    return walnames.parse_lsn(text)
