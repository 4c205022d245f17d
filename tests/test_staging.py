"""Which archive file a restore stages for a planned segment."""
from __future__ import annotations

from restores.engine import local_wal
from walcatalog.models import WalSegment

NAME = "000000010000000000000007"


def segment(partial: bool) -> WalSegment:
    return WalSegment(server_id=1, name=NAME, timeline=1, segno=7, is_partial=partial)


def test_a_planned_partial_completed_since_is_read_from_the_complete_segment(tmp_path):
    (tmp_path / f"{NAME}.partial").write_bytes(b"w" * 16)
    assert local_wal(tmp_path, segment(True)) == tmp_path / f"{NAME}.partial"
    (tmp_path / f"{NAME}.partial").rename(tmp_path / NAME)  # what pg_receivewal does at the segment's end
    assert local_wal(tmp_path, segment(True)) == tmp_path / NAME
    (tmp_path / NAME).unlink()
    assert local_wal(tmp_path, segment(True)) is None


def test_a_complete_segment_is_never_stood_in_for_by_a_partial(tmp_path):
    (tmp_path / f"{NAME}.partial").write_bytes(b"w" * 16)
    assert local_wal(tmp_path, segment(False)) is None


def test_memory_settings_are_read_as_postgresql_reads_them(tmp_path):
    """The copy's shared_buffers decides whether replay raises it: units, quotes, comments, 8 kB blocks,
    and postgresql.auto.conf after postgresql.conf."""
    from fleet.pgconf import memory_setting

    assert memory_setting(tmp_path, "shared_buffers") is None
    (tmp_path / "postgresql.conf").write_text("#shared_buffers = 4GB\nshared_buffers = 128MB  # min 128kB\n")
    assert memory_setting(tmp_path, "shared_buffers") == 128 << 20
    (tmp_path / "postgresql.auto.conf").write_text("shared_buffers = '2GB'\n")
    assert memory_setting(tmp_path, "shared_buffers") == 2 << 30
    (tmp_path / "postgresql.auto.conf").write_text("shared_buffers=65536\n")
    assert memory_setting(tmp_path, "shared_buffers") == 65536 * 8192
