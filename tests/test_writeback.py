"""restores.staging.Writeback: the kernel is asked to write back every file tar wrote, as it grows."""
from __future__ import annotations

from restores.staging import Writeback


def test_writeback_reaches_every_file_and_again_when_it_grows(tmp_path):
    (tmp_path / "base" / "1").mkdir(parents=True)
    first = tmp_path / "base" / "1" / "1259"
    first.write_bytes(b"x" * 8192)
    writeback = Writeback(tmp_path, interval=0.01)
    second = tmp_path / "global_pg_control"
    second.write_bytes(b"y" * 100)
    with open(first, "ab") as fh:
        fh.write(b"z" * 8192)
    writeback.close()  # the last pass sees what was written just before
    assert writeback.flushed == {str(first): 16384, str(second): 100}
    assert not writeback.thread.is_alive()



def test_sync_tree_fsyncs_every_file_and_folder_through_pg_wal_and_tablespace_links(tmp_path, monkeypatch):
    """What PostgreSQL's start-up SyncDataDirectory would have synced, had replay not run with fsync=off."""
    import os

    from restores import staging

    data, wal, space = tmp_path / "data", tmp_path / "wal", tmp_path / "space"
    (data / "base" / "1").mkdir(parents=True)
    wal.mkdir()
    (space / "PG_15").mkdir(parents=True)
    (data / "base" / "1" / "1259").write_bytes(b"x" * 8192)
    (wal / "000000010000000000000003").write_bytes(b"w" * 100)
    (space / "PG_15" / "16390").write_bytes(b"t" * 100)
    (data / "pg_wal").symlink_to(wal)
    (data / "pg_tblspc").mkdir()
    (data / "pg_tblspc" / "16389").symlink_to(space)
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(staging.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                          real_fsync(fd)))
    staging.sync_tree(data)
    assert {str(wal / "000000010000000000000003"), str(space / "PG_15" / "16390"),
            str(data / "base" / "1" / "1259")} <= set(synced)
    assert {str(data), str(data / "base" / "1"), str(wal), str(space / "PG_15")} <= set(synced)
