"""A restore that says done is exact: rotted WAL is caught before the server starts, a recovery that ends
short of the plan fails with the server's own reason, and the planner takes only backups that exist.

Every fault is made in a private copy of the archive (tests/storage_scenario.private_copy): the session
fleet's own files are never touched.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest

from pitrsite.errors import PitrError
from pitrsite.jobs import JobReporter, JobState
from restores.engine import run_restore
from restores.models import RestoreJob
from restores.planner import RestoreTarget, plan
from restores.service import queue_restore
from tests.restore_helpers import empty_catalog, primary_ids_committed, restored_ids
from tests.storage_scenario import make_scenario, narrow_catalog, private_copy
from tests.storage_servers import archive_storage  # noqa: F401
from walcatalog.backups import backup_dir
from walcatalog.models import WalSegment
from walcatalog.uploader import upload_pass

pytestmark = [pytest.mark.fleet, pytest.mark.django_db]


@pytest.fixture(scope="module")
def scenario(fleet, django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        yield make_scenario(fleet, backups=2, rows_between=8, switch_every=4)
        empty_catalog()


def attempt(target: RestoreTarget) -> RestoreJob:
    job = queue_restore(target)
    try:
        run_restore(job, JobReporter(job))
    except PitrError:
        pass  # the job row holds the error
    job.refresh_from_db()
    return job


def rot(path: Path, offset: int = 200) -> str:
    """Flip 16 bytes inside the segment's first records, keeping size and mtime (bit rot, not a rewrite).

    The file is replaced, not written in place: in a private copy it is a hard link to the fleet's own.
    """
    data = bytearray(path.read_bytes())
    data[offset:offset + 16] = bytes(b ^ 0xFF for b in data[offset:offset + 16])
    stat = path.stat()
    tmp = path.with_name(path.name + ".rot")
    tmp.write_bytes(data)
    shutil.copystat(path, tmp)
    os.chown(tmp, stat.st_uid, stat.st_gid)
    os.replace(tmp, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return hashlib.sha256(data).hexdigest()


def victim(archive: Path) -> WalSegment:
    """A complete segment the latest restore replays, not its last one, holding this scenario's rows."""
    segments = [s for s in plan(RestoreTarget.from_options(latest=True)).segments if not s.is_partial]
    assert len(segments) >= 3, segments
    segment = segments[1]
    assert (archive / segment.name).stat().st_mtime_ns == segment.mtime_ns
    return segment


def test_rotted_segment_fails_before_the_server_starts(scenario, settings, tmp_path):
    with private_copy(settings, tmp_path) as (archive, _):
        segment = victim(archive)
        rot(archive / segment.name)
        job = attempt(RestoreTarget.from_options(latest=True))
    assert job.state == JobState.FAILED
    assert job.error.startswith("failure checking WAL") and segment.name in job.error, job.error
    assert "not the WAL that was cataloged" in job.error
    assert "replaying WAL" not in [s["name"] for s in job.steps]  # the server never started


def test_recovery_ending_short_of_the_staged_wal_is_a_failure(scenario, settings, tmp_path, fleet):
    """The catalog itself trusts the rotted bytes (as the indexer once re-hashed a changed file): the server
    replays up to the damage and promotes there, and only the end-of-recovery check stands between that
    copy and a `done`."""
    with private_copy(settings, tmp_path) as (archive, _):
        segment = victim(archive)
        WalSegment.objects.filter(pk=segment.pk).update(sha256=rot(archive / segment.name))
        job = attempt(RestoreTarget.from_options(latest=True))
    assert job.state == JobState.FAILED, "a restore that stopped short reads done"
    assert re.search(r"recovery ended at \S+, before \S+ \(the end of the WAL captured in \S+\.partial\): "
                     r"(invalid|incorrect|unexpected|record)", job.error), job.error
    assert "restore target was stopped" in job.error
    assert fleet.state("restore_target") == "stopped"


def test_time_target_failure_names_the_servers_reason(scenario, settings, tmp_path):
    row = scenario["rows"][-1]
    with private_copy(settings, tmp_path) as (archive, _):
        segment = victim(archive)
        WalSegment.objects.filter(pk=segment.pk).update(sha256=rot(archive / segment.name))
        job = attempt(RestoreTarget.from_options(time=row.committed_at.isoformat()))
    assert job.state == JobState.FAILED
    assert "starting up" not in job.error, job.error  # our own probe's refused connection is not the cause
    assert re.search(r"recovery ended before configured recovery target was reached|"
                     r"(invalid|incorrect|unexpected) .*record", job.error), job.error


@pytest.mark.parametrize("archive_storage", ["filesystem"], indirect=True)
def test_rotted_segment_is_replaced_by_its_verified_copy(archive_storage, scenario, settings, tmp_path, fleet,
                                                        primary):
    narrow_catalog(scenario["backup"])
    assert not upload_pass().errors
    with private_copy(settings, tmp_path) as (archive, _):
        segment = victim(archive)
        rot(archive / segment.name)
        job = attempt(RestoreTarget.from_options(latest=True))
    assert job.state == JobState.DONE, job.error
    assert job.plan["wal_check"]["replaced_from_storage"] == [segment.name]
    assert job.source == "mixed"
    assert restored_ids(fleet) == {r[0] for r in primary.execute("SELECT id FROM test_data").fetchall()}


def test_planner_takes_an_older_backup_when_the_newer_one_is_lost(scenario, settings, tmp_path, fleet, primary):
    older, newer = scenario["backups"]
    row = scenario["rows"][-1]  # after both backups
    target = RestoreTarget.from_options(time=row.committed_at.isoformat())
    with private_copy(settings, tmp_path):
        assert plan(target).backup.pk == newer.pk
        shutil.rmtree(backup_dir(newer))
        assert plan(target).backup.pk == older.pk
        job = attempt(target)
    assert job.state == JobState.DONE, job.error
    assert job.backup_id == older.pk
    assert restored_ids(fleet) == primary_ids_committed(primary, row.committed_at)


def test_scrub_finds_a_rotted_backup_file_and_the_planner_leaves_that_backup(scenario, settings, tmp_path):
    from walcatalog.models import BaseBackup
    from walcatalog.scrub import scrub_archive

    older, newer = scenario["backups"]
    newer.refresh_from_db()
    assert set(newer.file_hashes) >= {"backup_manifest"} and all(len(h["sha256"]) == 64
                                                                 for h in newer.file_hashes.values())
    target = RestoreTarget.from_options(time=scenario["rows"][-1].committed_at.isoformat())
    with private_copy(settings, tmp_path) as (archive, _):
        base = next(name for name in newer.file_hashes if name.startswith("base.tar"))
        rot(backup_dir(newer) / base, offset=4096)
        result = scrub_archive(archive, mb_per_s=0)
        assert result.corrupt == 1, result
        newer = BaseBackup.objects.get(pk=newer.pk)
        assert newer.corrupt_at is not None and base in newer.corrupt_detail
        assert plan(target).backup.pk == older.pk  # held nowhere else: the older one serves
