"""Celery beat runs the uploader: a segment completed on the primary ends up verified in storage by itself, and
a snapshot of the growing .partial beside it."""
from __future__ import annotations

import pytest

from tests.conftest import wait_for
from tests.restore_helpers import wait_captured, write_rows
from tests.storage_servers import moto_server  # noqa: F401
from walcatalog import storage as st

pytestmark = [pytest.mark.fleet]


@pytest.fixture
def worker_storage(monkeypatch, tmp_path):
    """Env for the worker started next: a private filesystem storage and a 1 s upload interval."""
    monkeypatch.setenv("PITR_STORAGE_BACKEND", "filesystem")
    monkeypatch.setenv("PITR_STORAGE_DIR", str(tmp_path / "storage"))
    monkeypatch.setenv("PITR_UPLOAD_INTERVAL", "1")
    return tmp_path / "storage"


def test_beat_uploads_completed_segments(worker_storage, celery_worker, primary):
    from walcatalog.models import StorageCopy, WalSegment

    rows = write_rows(primary, 3, "beat-upload", switch_every=3)  # ends with a switch: a complete segment
    primary.execute("SELECT txid_current()")  # WAL after the switch: capture reaches the primary's position
    wait_captured()
    last_lsn = rows[-1].lsn_after

    def segment_copied():
        seg = WalSegment.objects.filter(start_lsn__lte=last_lsn, end_lsn__gt=last_lsn, is_partial=False).first()
        if seg is None:
            return None
        return StorageCopy.objects.filter(segment=seg, verified_at__isnull=False).first()

    copy = wait_for(segment_copied, 60, "beat to index and upload the completed segment")
    path = worker_storage / copy.key
    assert path.is_file() and st.sha256_file(path) == (copy.size, copy.sha256)
    assert copy.key == st.wal_key(copy.segment.name)

    # The growing .partial goes up too (the first snapshot at once), under its own key, never a segment's.
    def snapshot_up():
        return StorageCopy.objects.filter(kind="partial", verified_at__isnull=False, segment__is_partial=True,
                                          segment__start_lsn__gt=last_lsn).select_related("segment").first()

    snapshot = wait_for(snapshot_up, 60, "beat to upload a snapshot of the growing .partial")
    assert snapshot.key == st.partial_key(snapshot.segment.name) != st.wal_key(snapshot.segment.name)
    for path in worker_storage.rglob("*.partial"):
        assert path.relative_to(worker_storage).as_posix() == st.partial_key(path.name[:24])


@pytest.mark.parametrize("backend", ["s3"])
def test_upload_killed_mid_pass_is_resumed(backend, transactional_db, fleet, primary, request, settings, tmp_path):
    """SIGKILL `manage.py upload` while it works; the next pass uploads exactly what has no verified copy."""
    import os
    import signal
    import subprocess
    import sys

    from restores.engine import refresh_catalog
    from tests.conftest import PROJECT, subprocess_env
    from tests.storage_servers import storage_env, storage_setting
    from walcatalog.models import StorageCopy
    from walcatalog.uploader import check_storage, upload_pass

    # ~20 MB of WAL (20 complete 1 MiB segments) in a table of its own, so the pass has work to be killed in.
    primary.execute("CREATE TABLE storage_kill_filler (b text)")
    primary.execute("INSERT INTO storage_kill_filler SELECT repeat(md5(g::text), 30) FROM generate_series(1, 15000) g")
    primary.execute("DROP TABLE storage_kill_filler")
    primary.execute("SELECT pg_switch_wal()")
    primary.execute("SELECT txid_current()")  # WAL after the switch: capture reaches the primary's position
    wait_captured()
    refresh_catalog()
    env = storage_env(backend, request, tmp_path)
    proc = subprocess.Popen([sys.executable, str(PROJECT / "manage.py"), "upload", "--parallel", "1"],
                            env=subprocess_env(**env), cwd=PROJECT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: StorageCopy.objects.count() >= 3 or proc.poll() is not None, 60,
                 "the upload pass to record its first copies", interval=0.02)
        assert proc.poll() is None, "the pass finished before it could be killed: give it more to upload"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_before = set(StorageCopy.objects.filter(verified_at__isnull=False).values_list("key", flat=True))

    settings.STORAGES = {**settings.STORAGES, "archive": storage_setting(env, tmp_path)}
    resumed = upload_pass()
    assert not resumed.errors and resumed.uploaded > 0
    uploaded_now = set(StorageCopy.objects.values_list("key", flat=True)) - done_before
    assert resumed.uploaded == len(uploaded_now)  # nothing verified before was sent again
    check = check_storage()
    assert check.ok and check.local_only == [] and check.verified == StorageCopy.objects.count()
