"""The catalog never trusts changed or junk files (issue 10), against the real fleet."""
from __future__ import annotations

import io
import json
import logging
import os

import pytest
from django.core.management import CommandError, call_command

from dashboard import status

from tests.test_indexer import SEG, archive, copy_archive, empty_catalog, sha256, switch_wal  # noqa: F401
from walcatalog.indexer import index_archive
from walcatalog.models import Timeline, WalSegment
from restores.planner import _target_timeline, RestoreTarget

pytestmark = [pytest.mark.fleet]


def test_changed_mtime_and_content_is_corrupt_not_retrusted(fleet, primary, empty_catalog, tmp_path, caplog):
    switch_wal(primary)
    names = copy_archive(tmp_path, complete_only=True)
    index_archive(tmp_path)
    name = names[0]
    row = WalSegment.objects.get(name=name)
    before = row.sha256
    path = tmp_path / name
    data = bytearray(path.read_bytes())
    data[SEG // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(row.mtime_ns + 5_000_000_000, row.mtime_ns + 5_000_000_000))
    with caplog.at_level(logging.WARNING, logger="walcatalog.indexer"):
        result = index_archive(tmp_path)
    row.refresh_from_db()
    assert result.corrupt == 1
    assert row.sha256 == before != sha256(path)
    assert row.corrupt_at is not None and "sha256" in row.corrupt_detail
    assert "is corrupt" in caplog.text and "indexing it again" not in caplog.text
    out = io.StringIO()
    with pytest.raises(CommandError, match="1 WAL segment"):
        call_command("walstatus", "--json", stdout=out)
    assert json.loads(out.getvalue())["corrupt"]["segments"][0]["name"] == name
    view = status.overview(with_capture=False, key="corrupt-test")
    assert view.corrupt == 1 and not view.protected and any("corrupt" in p for p in view.problems)


def test_segment_named_file_of_junk_size_is_junk_not_a_gap(fleet, primary, empty_catalog, tmp_path, caplog):
    switch_wal(primary)
    copy_archive(tmp_path, complete_only=True)
    (tmp_path / "000000010000000000000099").write_bytes(b"x" * 10)
    with caplog.at_level(logging.WARNING, logger="walcatalog.indexer"):
        result = index_archive(tmp_path)
        index_archive(tmp_path)
    assert not WalSegment.objects.filter(name="000000010000000000000099").exists()
    assert result.junk >= 1
    assert caplog.text.count("000000010000000000000099") == 1


def test_stray_history_file_is_not_a_restore_timeline(fleet, primary, empty_catalog, tmp_path):
    switch_wal(primary)
    copy_archive(tmp_path, complete_only=True)
    (tmp_path / "00000009.history").write_text("1\t0/3000000\tno recovery target specified\n")
    index_archive(tmp_path)
    real = max(WalSegment.objects.values_list("timeline", flat=True))
    assert _target_timeline(RestoreTarget(kind="latest"), []) == real != 9
    (tmp_path / "00000009.history").unlink()
    index_archive(tmp_path)
    assert not Timeline.objects.filter(tli=9).exists()
