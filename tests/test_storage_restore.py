"""Upload to each real storage, verify, lose the local files, restore from the bucket with exact rows.

S3 (moto server), Azure Blob (Azurite), GCS (gcp-storage-emulator) and the filesystem backend, each in a
fresh bucket. The shared fleet's archive is never modified: see tests/storage_scenario.py.
"""
from __future__ import annotations

import json
import re
from io import StringIO

import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command

from pitrsite.errors import PitrError
from pitrsite import joblog
from pitrsite.jobs import JobReporter, JobState, job_key
from restores.engine import run_restore
from restores.models import RestoreJob
from restores.planner import PlanError, RestoreTarget
from restores.service import queue_restore
from tests.restore_helpers import empty_catalog, primary_ids_committed, restored_ids
from tests.storage_scenario import local_files_lost, make_scenario, narrow_catalog
from tests.storage_servers import BACKENDS, archive_storage, azurite_server, gcs_emulator, moto_server  # noqa: F401
from walcatalog import storage as st
from walcatalog import walnames
from walcatalog.models import BaseBackup, RestorePoint, StorageCopy, Timeline, WalSegment
from walcatalog.rebuild import RebuildError, rebuild_from_storage
from walcatalog.uploader import check_storage, upload_pass

pytestmark = [pytest.mark.fleet, pytest.mark.django_db]
each_backend = pytest.mark.parametrize("archive_storage", BACKENDS, indirect=True)


@pytest.fixture(scope="module")
def scenario(fleet, django_db_setup, django_db_blocker):
    with django_db_blocker.unblock():
        yield make_scenario(fleet, backups=1, rows_between=12, switch_every=4)
        empty_catalog()  # what this module committed must not leak into the next


@pytest.fixture
def narrowed(scenario):
    narrow_catalog(scenario["backup"])
    return scenario


def uploaded(storage) -> dict:
    result = upload_pass()
    assert not result.errors, result.errors
    return result.as_dict()


def restore_from_storage(settings, tmp_path, target: RestoreTarget) -> RestoreJob:
    with local_files_lost(settings, tmp_path):
        job = queue_restore(target)
        try:
            run_restore(job, JobReporter(job))
        except PitrError:
            pass  # the job row holds the error; the test looks at it
    job.refresh_from_db()
    return job


@each_backend
def test_upload_verify_resume_and_rebuild(archive_storage, narrowed):
    first = uploaded(archive_storage)
    segments = WalSegment.objects.filter(is_partial=False, in_local_archive=True).count()
    assert first["wal"] == segments >= 3
    assert first["backup_files"] == 3 and first["descriptors"] == 1  # base.tar.zst, pg_wal.tar.zst, backup_manifest
    assert not StorageCopy.objects.filter(verified_at__isnull=True).exists()
    assert WalSegment.objects.filter(is_partial=True).exists()
    # The growing .partial goes up as a snapshot under its own key, never under a complete segment's.
    growing = WalSegment.objects.get(is_partial=True)
    assert first["partials"] == 1
    assert list(StorageCopy.objects.filter(segment__is_partial=True).values_list("kind", "key")) == \
        [("partial", st.partial_key(growing.name))]
    assert st.wal_key(growing.name) not in st.list_keys(archive_storage, st.area("wal"))
    assert uploaded(archive_storage)["uploaded"] == 0  # everything has a verified copy: nothing to do

    check = check_storage()
    assert check.ok and check.verified == StorageCopy.objects.count() and not check.untracked
    assert check.local_only == [] and check.remote_only == []

    # An upload killed mid-way: half an object under one key and no verified record; another never started.
    half = StorageCopy.objects.filter(kind="wal").order_by("key")[1]
    whole = st.read_bytes(archive_storage, half.key)
    archive_storage.save(half.key, ContentFile(whole[: len(whole) // 2]))
    StorageCopy.objects.filter(pk=half.pk).update(verified_at=None)
    never = StorageCopy.objects.filter(kind="backup").order_by("key").first()
    archive_storage.delete(never.key)
    never.delete()
    StorageCopy.objects.filter(kind="descriptor").delete()
    assert check_storage().mismatched and not check_storage().ok
    resumed = uploaded(archive_storage)
    assert (resumed["wal"], resumed["backup_files"], resumed["descriptors"]) == (1, 1, 1)
    assert st.read_bytes(archive_storage, half.key) == whole
    assert check_storage().ok

    # The catalog lost: rebuilt from the bucket alone, row for row.
    before = {s.name: (s.timeline, s.segno, s.sha256, s.first_commit_at, s.last_commit_at, s.commit_count)
              for s in WalSegment.objects.filter(copies__isnull=False)}
    backup = narrowed["backup"]
    keys = set(StorageCopy.objects.values_list("key", flat=True))
    RestoreJob.objects.all().delete()
    for model in (StorageCopy, RestorePoint, WalSegment, BaseBackup, Timeline):
        model.objects.all().delete()
    result = rebuild_from_storage()
    assert result.backups == 1 and result.segments == len(before) and not result.skipped
    after = {s.name: (s.timeline, s.segno, s.sha256, s.first_commit_at, s.last_commit_at, s.commit_count)
             for s in WalSegment.objects.all()}
    assert after == before
    assert set(StorageCopy.objects.filter(verified_at__isnull=False).values_list("key", flat=True)) == keys
    rebuilt = BaseBackup.objects.get()
    assert (rebuilt.label, rebuilt.start_lsn, rebuilt.stop_lsn, rebuilt.stop_time, rebuilt.timeline) == \
        (backup.label, backup.start_lsn, backup.stop_lsn, backup.stop_time, backup.timeline)
    assert rebuilt.restorable
    with pytest.raises(RebuildError, match="the catalog is not empty"):
        rebuild_from_storage()


@each_backend
def test_restore_from_storage_exact_and_corruption_detected(archive_storage, narrowed, fleet, primary, settings,
                                                            tmp_path, monkeypatch):
    uploaded(archive_storage)
    monkeypatch.setattr(st, "RANGE", 64 << 10)  # S3: base.tar comes in many ranged GETs, reassembled in order
    row = narrowed["rows"][6]
    target = RestoreTarget.from_options(time=row.committed_at.isoformat())
    job = restore_from_storage(settings, tmp_path / "ok", target)
    assert job.state == JobState.DONE, job.error
    assert job.source == "storage"
    assert restored_ids(fleet) == primary_ids_committed(primary, row.committed_at)
    assert row.id in restored_ids(fleet) and narrowed["rows"][7].id not in restored_ids(fleet)

    # base.tar was extracted as it downloaded: no fallback, no scratch copy of it.
    assert not any("downloading it instead" in line for line in joblog.tail(job_key(job), 5000))

    # A damaged base.tar in storage: the stream's checksum (or tar) catches it, the restore downloads it
    # again, checked before use, and fails naming the object; the bucket's copy is not trusted.
    base = StorageCopy.objects.get(backup__isnull=False, key__contains="/base.tar")
    good = archive_storage.open(base.key, "rb").read()
    archive_storage.delete(base.key)
    archive_storage.save(base.key, ContentFile(good[:-100] + b"x" * 100))
    damaged = restore_from_storage(settings, tmp_path / "damaged", target)
    assert damaged.state == JobState.FAILED
    assert base.key in damaged.error and "corrupted" in damaged.error, damaged.error
    assert any("downloading it instead" in line for line in joblog.tail(job_key(damaged), 5000))
    archive_storage.delete(base.key)
    archive_storage.save(base.key, ContentFile(good))

    # Another object under a WAL key the restore needs: the restore fails naming it, and check sees it.
    victim = StorageCopy.objects.get(segment__name=job.wal_last)
    archive_storage.save(victim.key, ContentFile(b"not the WAL you are looking for"))
    failed = restore_from_storage(settings, tmp_path / "bad", target)
    assert failed.state == JobState.FAILED
    assert victim.key in failed.error and "corrupted" in failed.error, failed.error
    assert failed.error.startswith("failure staging WAL")
    assert any(m.startswith(victim.key) for m in check_storage().mismatched)

    # A compressed object that matches its record but holds other WAL (a record and an object swapped):
    # decompressed, its bytes are held to the catalog's sha256 of the segment before replay reads them.
    other = StorageCopy.objects.filter(kind="wal").exclude(pk=victim.pk).first()
    swapped = st.upload(archive_storage, victim.key, settings.PITR_WAL_ARCHIVE / other.segment.name)
    StorageCopy.objects.filter(pk=victim.pk).update(size=swapped.size, sha256=swapped.sha256)
    victim.refresh_from_db()
    assert st.wal_compressed(victim.key)
    failed = restore_from_storage(settings, tmp_path / "swapped", target)
    assert failed.state == JobState.FAILED
    assert victim.key in failed.error and "not the cataloged segment" in failed.error, failed.error

    # Held nowhere: refused by the planner before a job exists, so nothing is touched.
    name = victim.segment.name
    victim.delete()
    jobs = RestoreJob.objects.count()
    with pytest.raises(PlanError, match=f"WAL gap: {name} missing from the archive and from storage"):
        restore_from_storage(settings, tmp_path / "gone", target)
    assert RestoreJob.objects.count() == jobs


@pytest.mark.parametrize("archive_storage", ["filesystem"], indirect=True)
def test_wal_stored_in_both_forms_is_checked_restored_and_rebuilt(archive_storage, narrowed, fleet, primary, settings,
                                                                 tmp_path):
    """Copies made with PITR_STORAGE_WAL_COMPRESSION=none stay valid after it becomes zstd; new ones go up
    compressed, about a fifteenth of the bytes; one restore reads both forms."""
    settings.PITR_STORAGE_WAL_COMPRESSION = "none"
    plain = uploaded(archive_storage)
    settings.PITR_STORAGE_WAL_COMPRESSION = "zstd"
    assert uploaded(archive_storage)["uploaded"] == 0  # a copy in the other form is a copy
    check = check_storage()
    assert check.ok and check.local_only == [] and check.remote_only == [], check.as_dict()
    wal = list(StorageCopy.objects.filter(kind="wal").order_by("key"))
    assert not any(st.wal_compressed(c.key) for c in wal)
    for copy in wal[1::2]:  # every other segment again, compressed now
        archive_storage.delete(copy.key)
        copy.delete()
    again = uploaded(archive_storage)
    assert again["wal"] == len(wal[1::2])
    packed = StorageCopy.objects.filter(kind="wal", key__endswith=".zst")
    assert packed.count() == len(wal[1::2]) and check_storage().ok
    raw = sum(c.segment.size for c in packed)
    assert sum(c.size for c in packed) < raw / 5, (raw, plain["bytes"])

    row = narrowed["rows"][6]
    target = RestoreTarget.from_options(time=row.committed_at.isoformat())
    job = restore_from_storage(settings, tmp_path / "mixed", target)
    assert job.state == JobState.DONE, job.error
    assert restored_ids(fleet) == primary_ids_committed(primary, row.committed_at)

    keys = set(StorageCopy.objects.values_list("key", flat=True))
    before = {s.name: s.sha256 for s in WalSegment.objects.filter(copies__isnull=False)}
    RestoreJob.objects.all().delete()
    for model in (StorageCopy, RestorePoint, WalSegment, BaseBackup, Timeline):
        model.objects.all().delete()
    result = rebuild_from_storage()
    assert not result.skipped, result.as_dict()
    assert {s.name: s.sha256 for s in WalSegment.objects.all()} == before
    assert set(StorageCopy.objects.values_list("key", flat=True)) == keys


@pytest.mark.parametrize("archive_storage", ["filesystem"], indirect=True)
def test_commands(archive_storage, narrowed):
    out = StringIO()
    call_command("upload", "--json", stdout=out, stderr=StringIO())
    result = json.loads(out.getvalue())
    assert result["uploaded"] > 0 and result["errors"] == [] and result["storage"].startswith("filesystem:")
    out = StringIO()
    call_command("storage", "check", "--json", stdout=out)
    check = json.loads(out.getvalue())
    assert check["ok"] and check["mismatched"] == [] and check["local_only"] == []
    out = StringIO()
    call_command("upload", stdout=out, stderr=StringIO())
    assert out.getvalue().startswith("0 of 0 object(s) uploaded")
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="the catalog is not empty"):
        call_command("rebuild_catalog", "--from-storage", stdout=StringIO(), stderr=StringIO())

    # Rebuilt, then the indexer's next pass finds the local files again (same bytes: marked local).
    copied = dict(WalSegment.objects.filter(copies__isnull=False).values_list("name", "sha256"))
    RestoreJob.objects.all().delete()
    for model in (StorageCopy, RestorePoint, WalSegment, BaseBackup, Timeline):
        model.objects.all().delete()
    out = StringIO()
    call_command("rebuild_catalog", "--from-storage", "--json", stdout=out, stderr=StringIO())
    assert json.loads(out.getvalue())["segments"] == len(copied)
    assert not WalSegment.objects.filter(in_local_archive=True).exists()
    from walcatalog.indexer import index_archive

    index_archive()
    local = dict(WalSegment.objects.filter(name__in=copied, in_local_archive=True).values_list("name", "sha256"))
    assert local == copied
    assert BaseBackup.objects.get(label=narrowed["backup"].label).path  # its local directory is found too


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize("archive_storage", ["filesystem"], indirect=True)
def test_rebuild_writes_in_short_transactions_and_takes_back_a_failed_one(archive_storage, narrowed):
    from django.db import connection

    uploaded(archive_storage)
    RestoreJob.objects.all().delete()
    for model in (StorageCopy, RestorePoint, WalSegment, BaseBackup, Timeline):
        model.objects.all().delete()
    outside = len(connection.atomic_blocks)  # the test's own wrapping transaction

    class Watch:
        """Records the transaction depth at each step; fails the rebuild at the backup check if asked."""

        def __init__(self, fail_at: str = ""):
            self.depths, self.fail_at = {}, fail_at

        def step(self, name: str) -> None:
            self.depths[name.split(" ")[0]] = len(connection.atomic_blocks) - outside
            if self.fail_at and name.startswith(self.fail_at):
                raise _Interrupted(name)

        def progress(self, done, total=None):
            pass

        def log(self, message):
            pass

    failing = Watch(fail_at="checking backup")
    with pytest.raises(_Interrupted):
        rebuild_from_storage(failing)
    assert failing.depths["checking"] == 0  # the indexed WAL was not held in an open transaction
    counts = [m.objects.count() for m in (StorageCopy, RestorePoint, WalSegment, BaseBackup, Timeline)]
    assert counts == [0, 0, 0, 0, 0]  # taken back: the rebuild can run again
    watch = Watch()
    result = rebuild_from_storage(watch)
    assert result.backups == 1 and result.segments > 0 and not result.skipped
    assert set(watch.depths.values()) == {0}


@pytest.mark.parametrize("archive_storage", ["s3"], indirect=True)
def test_switching_storage_uploads_everything_to_the_new_one(archive_storage, narrowed, settings, request, tmp_path):
    """Copy records name where they are (backend, endpoint, bucket): a home pointed at another bucket, then at
    another backend, uploads everything again there, and says which storage it means."""
    from tests.storage_servers import storage_env, storage_setting

    from django.db.models import Max

    from walcatalog.uploader import storage_recovery_point

    assert storage_recovery_point() is None  # nothing in this bucket yet
    first = upload_pass()
    assert first.uploaded and not first.errors and first.storage.startswith("s3:")
    # The storage's recovery point: the tail row in the .partial (make_scenario's last commit), whose snapshot
    # went up with the complete segments; without snapshots, the newest commit of a complete segment.
    point = storage_recovery_point()
    assert point == WalSegment.objects.get(is_partial=True).last_commit_at == StorageCopy.objects.get(
        kind="partial").last_commit_at
    assert point > WalSegment.objects.filter(is_partial=False).aggregate(at=Max("last_commit_at"))["at"]
    assert upload_pass().pending == 0  # nothing left for the same bucket
    for backend in ("s3", "azure"):
        settings.STORAGES = {**settings.STORAGES,
                             "archive": storage_setting(storage_env(backend, request, tmp_path), tmp_path)}
        again = upload_pass()
        assert not again.errors, again.errors
        assert again.storage == st.identity() and again.storage != first.storage
        assert again.uploaded == first.uploaded, (again.as_dict(), first.as_dict())
        check = check_storage()
        assert check.storage == st.identity()
        assert check.ok and not check.local_only and check.verified == first.uploaded, check.as_dict()
    assert StorageCopy.objects.values("storage").distinct().count() == 3


@pytest.mark.parametrize("archive_storage", ["filesystem"], indirect=True)
def test_partial_snapshot_reaches_storage_and_a_restore_from_storage_alone_uses_it(
        archive_storage, narrowed, fleet, primary, settings, tmp_path):
    """Commits since the last segment switch reach storage as a snapshot of the .partial (its valid prefix,
    under its own key), replaced as it grows at most every PITR_PARTIAL_UPLOAD_INTERVAL s and dropped once the
    complete segment is up. With the local archive gone, a restore to the latest WAL ends exactly at the
    snapshot: every row committed before it, nothing after."""
    from restores.engine import refresh_catalog
    from tests.restore_helpers import wait_captured, write_rows
    from walcatalog.uploader import storage_recovery_point

    settings.PITR_PARTIAL_UPLOAD_INTERVAL = 3600
    before = write_rows(primary, 5, "snapshot")  # no segment switch since the last of these commits
    wait_captured()
    refresh_catalog()
    growing = WalSegment.objects.get(is_partial=True)
    # Not always equal: autovacuum's analyze of test_data commits too, at any moment.
    assert growing.last_commit_at >= before[-1].committed_at
    first = uploaded(archive_storage)
    assert first["partials"] == 1
    snap = StorageCopy.objects.get(kind="partial")
    assert snap.key == st.partial_key(growing.name) != st.wal_key(growing.name)
    assert (snap.segment_id, snap.size) == (growing.pk, growing.scanned_to - growing.start_lsn)
    assert snap.last_commit_at == growing.last_commit_at == storage_recovery_point()
    assert st.read_bytes(archive_storage, snap.key) == (fleet.layout.archive / growing.file_name).read_bytes()[
        :snap.size]

    after = write_rows(primary, 3, "after-snapshot")
    wait_captured()
    refresh_catalog()
    assert uploaded(archive_storage)["partials"] == 0  # grown, but the last snapshot is younger than the interval

    job = restore_from_storage(settings, tmp_path / "lost", RestoreTarget.from_options(latest=True))
    assert job.state == JobState.DONE, job.error
    assert job.source == "storage" and job.uses_partial and job.wal_last == growing.file_name
    assert job.plan["partial_snapshot"]["key"] == snap.key
    restored = restored_ids(fleet)
    assert restored == primary_ids_committed(primary, snap.last_commit_at)
    assert {r.id for r in before} <= restored and not {r.id for r in after} & restored

    # Time targets plan against the snapshot's commits, not the lost local file's (no restore run: planning only).
    from pitrsite.errors import NotYetCaptured
    from restores.planner import plan

    with local_files_lost(settings, tmp_path / "plans"):
        refresh_catalog()
        with pytest.raises(NotYetCaptured, match=re.escape(snap.last_commit_at.isoformat())):
            plan(RestoreTarget.from_options(time=after[-1].committed_at.isoformat()))
        newest = plan(RestoreTarget.from_options(time=snap.last_commit_at.isoformat()))
        assert newest.snapshot == snap and newest.recovery["recovery_target_lsn"] == \
            walnames.format_lsn(snap.last_commit_lsn)
        inside = plan(RestoreTarget.from_options(time=before[-2].committed_at.isoformat()))
        assert inside.snapshot == snap and inside.segments[-1].pk == growing.pk
        assert "recovery_target_time" in inside.recovery

    # Due again: replaced under the same key by the longer prefix; then the segment completes and the
    # snapshot is dropped from storage once the complete segment has a verified copy.
    settings.PITR_PARTIAL_UPLOAD_INTERVAL = 0.001
    refresh_catalog()  # the archive is back (the restore's index pass saw it lost)
    assert uploaded(archive_storage)["partials"] == 1
    grown = StorageCopy.objects.get(kind="partial")
    assert grown.key == snap.key and grown.size > snap.size
    assert grown.last_commit_at == WalSegment.objects.get(pk=growing.pk).last_commit_at >= after[-1].committed_at
    primary.execute("SELECT pg_switch_wal()")
    wait_captured()
    refresh_catalog()
    last = uploaded(archive_storage)
    assert last["partials_dropped"] == 1
    assert not archive_storage.exists(snap.key)
    assert StorageCopy.objects.filter(segment=growing, kind="wal", verified_at__isnull=False).exists()
    assert check_storage().ok and not check_storage().remote_only
