"""Celery beat runs the uploader: a segment completed on the primary ends up verified in storage by itself."""
from __future__ import annotations

import pytest

from tests.conftest import wait_for
from tests.restore_helpers import wait_captured, write_rows
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
    assert not any(p.name.endswith(".partial") for p in worker_storage.rglob("*"))
