"""Catalog questions on rows written directly: gaps across timeline switches, the window, the summary, speed."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from django.db import connection

from pitrsite.jobs import JobState
from walcatalog import catalog, segsize, storage, walnames
from walcatalog.models import BaseBackup, StorageCopy, Timeline, WalSegment

SEG = 1 << 20
T0 = datetime(2026, 11, 27, 9, 0, tzinfo=timezone.utc)


@pytest.fixture
def cat(db, monkeypatch):
    """An empty catalog of 1 MiB segments (rows of other test files are removed inside this test's transaction)."""
    monkeypatch.setattr(segsize, "_segment_size", SEG)
    StorageCopy.objects.all().delete()
    WalSegment.objects.all().delete()
    Timeline.objects.all().delete()
    BaseBackup.objects.update(manifest_verified=False)


def add(tli: int, segnos, *, partial_last: bool = False, local: bool = True, commits: bool = True) -> None:
    segnos = list(segnos)
    rows = []
    for i, segno in enumerate(segnos):
        start = segno * SEG
        at = T0 + timedelta(seconds=segno)
        rows.append(WalSegment(
            timeline=tli, segno=segno, name=walnames.segment_name(tli, segno, SEG), start_lsn=start,
            end_lsn=start + SEG, size=SEG, is_partial=partial_last and i == len(segnos) - 1,
            in_local_archive=local, scanned_to=start + SEG,
            first_commit_at=at if commits else None,
            last_commit_at=at + timedelta(milliseconds=900) if commits else None,
            last_commit_lsn=start + SEG - 100 if commits else None, commit_count=2 if commits else 0))
    WalSegment.objects.bulk_create(rows, batch_size=5000)


def branch(tli: int, parent: int, switch_lsn: int) -> None:
    Timeline.objects.create(tli=tli, parent_tli=parent, switch_lsn=switch_lsn,
                            history=f"{parent}\t{walnames.format_lsn(switch_lsn)}\tno recovery target specified\n")


def spans(gaps) -> list[tuple[int, int, int]]:
    return [(g.timeline, g.first, g.last) for g in gaps]


def test_contiguous_timeline_has_no_gap(cat):
    add(1, range(10, 21), partial_last=True)
    assert catalog.gaps() == []


def test_holes_are_found_as_runs(cat):
    add(1, [10, 11, 12, 14, 17, 18])
    found = catalog.gaps()
    assert spans(found) == [(1, 13, 13), (1, 15, 16)]
    assert found[1].count == 2 and found[1].first_name == walnames.segment_name(1, 15, SEG)
    assert found[1].start_lsn == 15 * SEG and found[1].end_lsn == 17 * SEG
    assert "2 segments" in found[1].text


def test_timeline_switch_parent_after_switch_not_expected_child_starts_at_switch(cat):
    switch = 15 * SEG + 0x2000  # mid-segment 15: timeline 2's first file is segment 15
    add(1, [10, 11, 12, 13, 14, 15, 18])  # 18: the old primary wrote on after the switch; 16, 17 not expected
    branch(2, 1, switch)
    add(2, [15, 16, 17], partial_last=True)
    assert catalog.gaps() == []

    WalSegment.objects.filter(timeline=2, segno=15).delete()  # the new timeline's first segment is missing
    assert spans(catalog.gaps()) == [(2, 15, 15)]
    assert spans(catalog.gaps(timeline=2)) == [(2, 15, 15)] and catalog.gaps(timeline=1) == []


def test_parent_missing_its_tail_before_the_switch_is_a_gap(cat):
    add(1, [10, 11, 12])
    branch(2, 1, 15 * SEG)  # switch at a segment boundary: timeline 1 ran through segment 14
    add(2, [15, 16])
    assert spans(catalog.gaps()) == [(1, 13, 14)]


def test_branch_capture_never_followed_changes_nothing(cat):
    add(1, range(10, 20))
    branch(2, 1, 12 * SEG)  # a history file, but no segment of timeline 2: the primary is still on 1
    assert catalog.gaps() == []


def test_segment_gone_locally_but_copied_to_storage_is_held(cat):
    add(1, range(10, 15))
    seg = WalSegment.objects.get(timeline=1, segno=12)
    WalSegment.objects.filter(pk=seg.pk).update(in_local_archive=False)
    assert spans(catalog.gaps()) == [(1, 12, 12)]
    elsewhere = StorageCopy.objects.create(kind="wal", storage="s3:a-bucket-this-home-left", key=seg.name,
                                           segment=seg, size=SEG, sha256="0" * 64, uploaded_at=T0, verified_at=T0)
    # A verified copy in a storage this home no longer points at cannot be downloaded: still a gap.
    assert spans(catalog.gaps()) == [(1, 12, 12)]
    elsewhere.delete()
    copy = StorageCopy.objects.create(kind="wal", storage=storage.identity(), key=seg.name, segment=seg, size=SEG,
                                      sha256="0" * 64, uploaded_at=T0)
    # An unverified copy is not used by the planner (_wal_range), so it is still a gap here too.
    assert spans(catalog.gaps()) == [(1, 12, 12)]
    StorageCopy.objects.filter(pk=copy.pk).update(verified_at=T0)
    assert catalog.gaps() == []


def test_corrupt_segment_without_verified_copy_is_a_gap(cat):
    add(1, range(10, 15))
    WalSegment.objects.filter(timeline=1, segno=12).update(corrupt_at=T0, corrupt_detail="test")
    assert spans(catalog.gaps()) == [(1, 12, 12)]


def test_window_from_oldest_segment_to_newest_commit(cat):
    assert catalog.recoverable_window() is None
    add(1, range(10, 20), partial_last=True)
    window = catalog.recoverable_window()
    assert window.based_on == "oldest segment" and window.backup_id is None
    assert window.start == T0 + timedelta(seconds=10) and window.start_lsn == 10 * SEG
    assert window.end == T0 + timedelta(seconds=19, milliseconds=900) and window.end_lsn == 20 * SEG - 100
    assert window.limited_by_gap is None and "oldest segment" in window.description


def test_window_starts_at_the_oldest_restorable_backup(cat):
    add(1, range(10, 30))
    common = dict(state=JobState.DONE, timeline=1, start_time=T0, stop_time=T0)
    BaseBackup.objects.create(label="wc-unverified", stop_lsn=11 * SEG, manifest_verified=False, **common)
    BaseBackup.objects.create(label="wc-failed", stop_lsn=11 * SEG, manifest_verified=True,
                              **{**common, "state": JobState.FAILED})
    newer = BaseBackup.objects.create(label="wc-newer", stop_lsn=20 * SEG + 8, manifest_verified=True,
                                      **{**common, "stop_time": T0 + timedelta(seconds=20, milliseconds=1)})
    older = BaseBackup.objects.create(label="wc-older", stop_lsn=14 * SEG + 8, manifest_verified=True,
                                      **{**common, "stop_time": T0 + timedelta(seconds=14, milliseconds=1)})
    window = catalog.recoverable_window()
    assert (window.based_on, window.backup_id, window.backup_label) == ("base backup", older.pk, "wc-older")
    assert window.start == older.stop_time and window.start_lsn == older.stop_lsn
    assert window.end == T0 + timedelta(seconds=29, milliseconds=900)
    assert newer.pk != window.backup_id and "wc-older" in window.description


def test_window_ends_before_the_first_gap_after_its_start(cat):
    add(1, [10, 11, 12, 14, 15])  # 13 missing
    window = catalog.recoverable_window()
    assert window.limited_by_gap is not None and (window.limited_by_gap.first, window.limited_by_gap.last) == (13, 13)
    assert window.end == T0 + timedelta(seconds=12, milliseconds=900) and window.end_lsn < 13 * SEG
    assert "gap" in window.description


def test_summary_without_fleet(cat):
    add(1, range(10, 15), partial_last=True)
    branch(2, 1, 14 * SEG + 0x100)
    add(2, [14, 15], partial_last=True)
    s = catalog.summary(with_fleet=False)
    assert s["segments"] == 7 and s["segment_size"] == SEG and "capturer" not in s
    assert [(t["timeline"], t["segments"], t["complete"], t["partial"]) for t in s["timelines"]] == [
        (1, 5, 4, 1), (2, 2, 1, 1)]
    assert s["timelines"][1]["parent"] == 1 and s["timelines"][1]["switch_lsn"] == "0/E00100"
    assert s["newest_segment"]["name"] == walnames.segment_name(2, 14, SEG)
    assert s["partial"]["name"] == walnames.segment_name(2, 15, SEG) + ".partial"
    assert s["gaps"] == [] and s["window"]["based_on"] == "oldest segment"


@pytest.mark.fleet
def test_summary_tolerates_an_unreachable_primary(fleet, cat, settings):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        settings.PITR_PRIMARY_PORT = sock.getsockname()[1]  # nobody answers there
    add(1, range(10, 12))
    capturer = catalog.summary()["capturer"]
    assert capturer["errors"] and capturer["lag_bytes"] is None


@pytest.mark.slow
def test_questions_stay_fast_at_100k_segments(cat):
    add(1, range(1000, 101_000))
    WalSegment.objects.filter(segno__in=[5000, 77_777, 77_778]).delete()
    if connection.vendor == "postgresql":  # fresh statistics, as autovacuum keeps them for a real catalog
        with connection.cursor() as cur:
            cur.execute(f"ANALYZE {WalSegment._meta.db_table}")
    timings = {}
    for name, call in (("gaps", catalog.gaps), ("window", catalog.recoverable_window),
                       ("summary", lambda: catalog.summary(with_fleet=False))):
        began = time.perf_counter()
        result = call()
        timings[name] = time.perf_counter() - began
        if name == "gaps":
            assert spans(result) == [(1, 5000, 5000), (1, 77_777, 77_778)]
    print(f"100k segments: {', '.join(f'{k} {v * 1000:.0f} ms' for k, v in timings.items())}")
    assert max(timings.values()) < 1.0, f"catalog questions too slow at 100k segments: {timings}"
