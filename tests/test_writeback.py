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

