"""Retention deletes old backups and WAL locally and in storage, and the oldest kept moment still restores.

Deletion happens in a private hard-linked copy of the archive and backups (tests/storage_scenario.py), so
the session fleet's own files are never touched; the catalog changes are rolled back with the test.
"""
from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from pitrsite.jobs import JobReporter, JobState
from restores.engine import run_restore
from restores.planner import PlanError, RestoreTarget, plan
from restores.service import queue_restore
from tests.restore_helpers import empty_catalog, primary_ids_committed, restored_ids
from tests.storage_scenario import make_scenario, narrow_catalog, private_copy
from tests.storage_servers import archive_storage, moto_server  # noqa: F401
from walcatalog import storage as st
from walcatalog.backups import backup_dir
from walcatalog.models import BaseBackup, StorageCopy, WalSegment
from walcatalog.retention import Policy, apply_retention
from walcatalog.uploader import upload_pass

pytestmark = [pytest.mark.fleet, pytest.mark.django_db]


@pytest.fixture(scope="module")
def two_backups(fleet, django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        yield make_scenario(fleet, backups=2, rows_between=8, switch_every=4)
        empty_catalog()  # what this module committed must not leak into the next


@pytest.fixture
def narrowed(two_backups):
    narrow_catalog(two_backups["backups"][0])
    for b in two_backups["backups"]:
        b.refresh_from_db()
    return two_backups


@pytest.mark.parametrize("archive_storage", ["s3"], indirect=True)
def test_keep_one_backup_then_restore_to_oldest_kept_moment(archive_storage, narrowed, fleet, primary, settings,
                                                             tmp_path):
    old, kept = narrowed["backups"]
    shared_archive = Path(settings.PITR_WAL_ARCHIVE)
    with private_copy(settings, tmp_path) as (archive, backups):
        assert not upload_pass().errors
        old_segments = list(WalSegment.objects.filter(end_lsn__lte=kept.start_lsn).order_by("segno"))
        assert old_segments, "the scenario must leave WAL between the two backups"
        old_keys = set(StorageCopy.objects.filter(backup=old).values_list("key", flat=True)) | set(
            StorageCopy.objects.filter(segment__in=old_segments).values_list("key", flat=True))
        objects_before = set(st.list_keys(archive_storage, "wal")) | set(st.list_keys(archive_storage, "backups"))

        dry = apply_retention(Policy(keep_backups=1), dry_run=True)
        assert dry.kept_backups == [kept.label] and old.label in dry.deleted_backups
        assert dry.deleted_segments >= len(old_segments) and dry.deleted_objects == len(old_keys)
        assert dry.last_deleted_segment < walnames_name(kept)
        # A dry run deletes nothing anywhere.
        assert backup_dir(old).is_dir() and all((archive / s.name).exists() for s in old_segments)
        assert set(st.list_keys(archive_storage, "wal")) | set(st.list_keys(archive_storage, "backups")) == \
            objects_before
        assert BaseBackup.objects.filter(pk=old.pk, manifest_verified=True).exists()

        done = apply_retention(Policy(keep_backups=1))
        assert (done.deleted_backups, done.deleted_segments, done.deleted_objects) == \
            (dry.deleted_backups, dry.deleted_segments, dry.deleted_objects)
        assert not backup_dir(old).exists() and backup_dir(kept).is_dir()
        assert not any((archive / s.name).exists() for s in old_segments)
        remaining = set(st.list_keys(archive_storage, "wal")) | set(st.list_keys(archive_storage, "backups"))
        assert remaining == objects_before - old_keys
        assert not WalSegment.objects.filter(pk__in=[s.pk for s in old_segments]).exists()
        assert not BaseBackup.objects.filter(pk=old.pk, manifest_verified=True).exists()
        # The shared fleet's archive still has every file: only the private copy lost them.
        assert all((shared_archive / s.name).exists() for s in old_segments)

        # The oldest kept moment (the kept backup's end) restores exactly; anything older is refused.
        moment = kept.stop_time
        job = queue_restore(RestoreTarget.from_options(time=moment.isoformat()))
        job = run_restore(job, JobReporter(job))
        assert job.state == JobState.DONE, job.error
        assert job.backup_id == kept.pk and job.source == "local"
        assert restored_ids(fleet) == primary_ids_committed(primary, moment)
        with pytest.raises(PlanError, match="before the end of the oldest usable backup"):
            plan(RestoreTarget.from_options(time=(old.stop_time + timedelta(microseconds=1)).isoformat()))
        again = apply_retention(Policy(keep_backups=1), dry_run=True)
        assert again.deleted_backups == [] and again.deleted_objects == 0  # nothing more to do
        assert BaseBackup.objects.get(pk=kept.pk).restorable


def walnames_name(backup: BaseBackup) -> str:
    from walcatalog import walnames

    return walnames.segment_name(backup.timeline, walnames.segment_of_lsn(backup.start_lsn, backup.segment_size),
                                 backup.segment_size)


def test_recovery_window_keeps_the_backup_before_it(narrowed):
    old, kept = narrowed["backups"]
    between = old.stop_time + (kept.stop_time - old.stop_time) / 2
    # Window begins between the two backups: moments just after its start need the older one.
    result = apply_retention(Policy(days=1), dry_run=True, now=between + timedelta(days=1))
    assert result.kept_backups == [kept.label, old.label] and old.label not in result.deleted_backups
    # Window begins after the newer backup: it alone covers every moment inside.
    result = apply_retention(Policy(days=1), dry_run=True, now=kept.stop_time + timedelta(days=1, seconds=1))
    assert result.kept_backups == [kept.label] and old.label in result.deleted_backups
    # Both limits: what either keeps is kept.
    result = apply_retention(Policy(keep_backups=2, days=1), dry_run=True,
                             now=kept.stop_time + timedelta(days=1, seconds=1))
    assert result.kept_backups == [kept.label, old.label]


def test_no_policy_deletes_nothing_and_command_reports(narrowed):
    assert apply_retention(Policy()).note == "nothing is deleted"
    out = StringIO()
    call_command("retention", "--dry-run", "--json", "--keep-backups", "1", stdout=out, stderr=StringIO())
    result = json.loads(out.getvalue())
    assert result["dry_run"] and result["kept_backups"] == [narrowed["backups"][1].label]
    assert narrowed["backups"][0].label in result["deleted_backups"]
    assert BaseBackup.objects.filter(pk=narrowed["backups"][0].pk, manifest_verified=True).exists()


def test_a_pinned_backup_is_never_removed(narrowed, settings, tmp_path):
    from walcatalog.retention import status_of_backups

    old, kept = narrowed["backups"]
    BaseBackup.objects.filter(pk=old.pk).update(pinned=True)
    settings.PITR_RETENTION_KEEP_BACKUPS, settings.PITR_RETENTION_DAYS = 1, 0
    assert status_of_backups()[old.pk] == "pinned" and status_of_backups()[kept.pk] == "kept"
    with private_copy(settings, tmp_path):
        done = apply_retention(Policy(keep_backups=1))
        assert old.label in done.kept_backups and old.label not in done.deleted_backups
        assert backup_dir(old).is_dir()
        assert BaseBackup.objects.filter(pk=old.pk, manifest_verified=True).exists()
        plan(RestoreTarget.from_options(time=(old.stop_time + timedelta(milliseconds=1)).isoformat()))  # still
    BaseBackup.objects.filter(pk=old.pk).update(pinned=False)
    assert status_of_backups()[old.pk] == "obsolete"  # unpinned: the next pass would remove it
