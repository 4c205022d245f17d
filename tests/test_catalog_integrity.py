"""The catalog never trusts changed or junk files (issue 10), against the real fleet."""
from __future__ import annotations

import io
import json
import logging
import os

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from dashboard import status
from restores.chain import Chain, restore_point, target_timeline
from restores.planner import PlanError, RestoreTarget
from tests.test_indexer import SEG, archive, copy_archive, empty_catalog, sha256, switch_wal  # noqa: F401
from walcatalog.indexer import index_archive
from walcatalog.models import RestorePoint, Timeline, WalSegment

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
    assert target_timeline(RestoreTarget(kind="latest"), []) == real != 9
    (tmp_path / "00000009.history").unlink()
    index_archive(tmp_path)
    assert not Timeline.objects.filter(tli=9).exists()


def test_history_file_branching_from_an_unknown_timeline_is_junk(fleet, primary, empty_catalog, tmp_path, caplog):
    switch_wal(primary)
    copy_archive(tmp_path, complete_only=True)
    (tmp_path / "00000007.history").write_text("1\t0/3000000\tno recovery target specified\n"
                                               "5\t0/4000000\tno recovery target specified\n")
    result = index_archive(tmp_path)
    assert not Timeline.objects.filter(tli=7).exists() and result.junk >= 1
    assert "parent timeline 5 is not in the catalog" in caplog.text
    (tmp_path / "00000008.history").write_text("1\tFF/0\tno recovery target specified\n")  # far past tl 1's WAL
    index_archive(tmp_path)
    assert not Timeline.objects.filter(tli=8).exists()
    assert "it switches at FF/0, after the end of timeline 1's WAL held here" in caplog.text


def test_restore_point_is_taken_from_the_chain_not_a_sibling_branch(db):
    # Timelines 2 and 3 both branched from 1 at 0/3000000; the same name was made later on 3.
    for tli in (2, 3):
        Timeline.objects.create(tli=tli, parent_tli=1, switch_lsn=0x3000000,
                                history="1\t0/3000000\tno recovery target specified\n")
    RestorePoint.objects.create(name="p", timeline=2, lsn=0x3100000)
    RestorePoint.objects.create(name="p", timeline=3, lsn=0x3200000)
    RestorePoint.objects.create(name="old", timeline=1, lsn=0x3500000)  # on 1 after the switch: not on 2's chain
    assert restore_point("p", Chain(2)) == 0x3100000
    with pytest.raises(PlanError, match="no restore point"):
        restore_point("old", Chain(2))


def test_target_timeline_reads_distinct_timelines_not_one_row_per_segment(db):
    WalSegment.objects.bulk_create([WalSegment(timeline=1, segno=n, name=f"{n:024X}", start_lsn=n << 20,
                                               end_lsn=(n + 1) << 20, size=1 << 20) for n in range(50)])
    with CaptureQueriesContext(connection) as queries:
        assert target_timeline(RestoreTarget(kind="latest"), []) == 1
    on_segments = [q["sql"] for q in queries if WalSegment._meta.db_table in q["sql"]]
    # One index probe per timeline (plus the one that finds no more), each an aggregate: never a read of
    # one row per segment (as DISTINCT with Meta.ordering was: it selected segno too).
    assert 1 <= len(on_segments) <= 2 and all("MIN(" in sql.upper() for sql in on_segments)


def test_scrub_catches_changed_content_with_kept_mtime(fleet, primary, empty_catalog, tmp_path, caplog):
    from walcatalog.scrub import scrub_archive

    switch_wal(primary)
    names = copy_archive(tmp_path, complete_only=True)
    index_archive(tmp_path)
    path = tmp_path / names[0]
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[SEG // 3] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot: the mtime does not move
    assert index_archive(tmp_path).corrupt == 0  # the indexer cannot see it
    with caplog.at_level(logging.WARNING, logger="walcatalog.scrub"):
        result = scrub_archive(tmp_path, mb_per_s=0)
    assert result.corrupt == 1 and result.checked == len(names)
    row = WalSegment.objects.get(name=names[0])
    assert row.corrupt_at is not None and row.checked_at is not None and "scrub" in caplog.text
