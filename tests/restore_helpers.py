"""Shared by the restore and chaos tests: write known rows, restore, compare with the primary."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from fleet import pg
from fleet.status import fleet_status
from tests.conftest import wait_for


@dataclass(frozen=True)
class Row:
    id: int
    xid: int
    committed_at: datetime
    lsn_after: int  # pg_current_wal_lsn() right after the commit: the end of its commit record


def write_rows(conn, count: int, tag: str, switch_every: int = 0, pause: float = 0.005) -> list[Row]:
    """One row per transaction; each row's exact commit time comes from track_commit_timestamp."""
    from walcatalog import walnames

    rows = []
    for i in range(count):
        row_id, xid = conn.execute("INSERT INTO test_data (payload) VALUES (%s) RETURNING id, xmin::text::bigint",
                                   [f"{tag}-{i}"]).fetchone()
        committed, lsn = conn.execute("SELECT pg_xact_commit_timestamp(%s::text::xid), pg_current_wal_lsn()::text",
                                      [str(xid)]).fetchone()
        rows.append(Row(row_id, xid, committed, walnames.parse_lsn(lsn)))
        if switch_every and (i + 1) % switch_every == 0:
            conn.execute("SELECT pg_switch_wal()")
        time.sleep(pause)
    return rows


def wait_captured(timeout: float = 30) -> None:
    """Until pg_receivewal has flushed everything the primary has written."""
    def caught_up():
        status = fleet_status()
        capturer = status.get("capturer") or {}
        return capturer.get("streaming") and capturer.get("lag_bytes") == 0
    wait_for(caught_up, timeout, "the capturer to flush all WAL")


def primary_ids_committed(conn, until: datetime, exclusive: bool = False) -> set[int]:
    op = "<" if exclusive else "<="
    return {r[0] for r in conn.execute(
        f"SELECT id FROM test_data WHERE pg_xact_commit_timestamp(xmin) {op} %s", [until]).fetchall()}


def restored_ids(driver) -> set[int]:
    with pg.connect(driver.layout.port("restore_target")) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM test_data").fetchall()}


def empty_catalog() -> None:
    """Delete every catalog and job row, dependants first (PROTECT on restore -> backup), and forget which
    cluster the servers are: an empty catalog learns it again from the next WAL indexed."""
    from django.apps import apps

    for label in ("chaos.ChaosRun", "restores.RestoreJob", "walcatalog.StorageCopy", "walcatalog.RestorePoint",
                  "walcatalog.WalSegment", "walcatalog.Timeline", "walcatalog.BaseBackup"):
        apps.get_model(label).objects.all().delete()
    apps.get_model("fleet.Server").objects.update(system_identifier="", pg_major=None)


def newest_commit():
    from django.db.models import Max

    from walcatalog.models import WalSegment

    return WalSegment.objects.aggregate(t=Max("last_commit_at"))["t"]


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
