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


def corrupt_index(port: int, index: str) -> None:
    """Stop the server on `port`, overwrite a leaf page of `index` with garbage, start it again.

    The B-tree's page 1 (its first leaf; page 0 is the metapage) gets its special space zeroed:
    PostgreSQL then reads a page claiming to be neither leaf nor internal, which amcheck reports.
    """
    from fleet.local import get_driver

    driver = get_driver()
    with pg.connect(port) as conn:
        path = conn.execute("SELECT pg_relation_filepath(%s)", [index]).fetchone()[0]
    driver.stop("restore_target", mode="fast")
    datafile = driver.layout.datadir("restore_target") / path
    with open(datafile, "r+b") as fh:
        fh.seek(8192 + 8192 - 16)  # the special space at the end of page 1: btpo_prev/next, level, flags
        fh.write(b"\xff" * 16)
    driver.start("restore_target")


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


def pg_lsn(text: str) -> int:
    from walcatalog import walnames

    return walnames.parse_lsn(text)
