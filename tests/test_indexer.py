"""The WAL indexer against the real fleet: segments, the growing partial, junk, gaps, concurrency."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from fleet.generate import generate
from fleet.status import capture_summary
from tests.conftest import PROJECT, manage, subprocess_env, wait_for
from tests.test_timeline_switch import second_fleet  # noqa: F401 - a private fleet to promote
from walcatalog import catalog, indexer, segsize, storage, waldump, walnames
from walcatalog.indexer import index_archive
from walcatalog.models import BaseBackup, RestorePoint, StorageCopy, Timeline, WalSegment

pytestmark = [pytest.mark.fleet]

SEG = 1 << 20  # the test fleet's PITR_WAL_SEGSIZE_MB=1


def archive() -> Path:
    return Path(settings.PITR_WAL_ARCHIVE)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def switch_wal(primary) -> str:
    """Complete the current segment and wait until the capturer has it under its complete name."""
    primary.execute("INSERT INTO test_data (payload) VALUES ('switch')")
    name = primary.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
    wait_for(lambda: (archive() / name).exists(), 30, f"the capturer to complete {name}")
    return name


def current_partial() -> Path:
    return wait_for(lambda: next(iter(sorted(archive().glob("*.partial"), reverse=True)), None), 30,
                    "a .partial in the archive")


def commit_times(primary, first_id: int) -> dict[int, object]:
    """xid -> commit time (track_commit_timestamp) of the rows with id > first_id."""
    rows = primary.execute("SELECT DISTINCT xmin::text::bigint, pg_xact_commit_timestamp(xmin) FROM test_data "
                           "WHERE id > %s", [first_id]).fetchall()
    return dict(rows)


def max_id(primary) -> int:
    return primary.execute("SELECT coalesce(max(id), 0) FROM test_data").fetchone()[0]


def wait_flushed(primary) -> None:
    """Until the capturer has flushed everything the primary has inserted so far.

    The insert position, not pg_current_wal_lsn() (the write position): a restore
    point's record is not flushed by its function and may still sit in WAL buffers.
    """
    target = primary.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]

    def flushed():
        # bool_or: a killed capturer's walsender may linger next to the new one for a moment.
        return primary.execute("SELECT bool_or(flush_lsn >= %s::pg_lsn) FROM pg_stat_replication "
                               "WHERE application_name = 'pg_receivewal'", [str(target)]).fetchone()[0]
    wait_for(flushed, 30, f"the capturer to flush up to {target}")


@pytest.fixture
def empty_catalog(db):
    """The catalog as if nothing were indexed yet (inside the test's transaction, rolled back after).

    Module fixtures of other test files may have indexed the archive for real.
    """
    StorageCopy.objects.all().delete()
    RestorePoint.objects.all().delete()
    WalSegment.objects.all().delete()
    Timeline.objects.all().delete()
    BaseBackup.objects.update(manifest_verified=False)  # no backup is restorable: the window starts at WAL


def copy_archive(dest: Path, complete_only: bool = False) -> list[str]:
    """A private copy of the fleet's archive (mtimes kept), to break without touching the real one."""
    dest.mkdir(exist_ok=True)
    names = []
    for path in sorted(archive().iterdir()):
        if complete_only and not (len(path.name) == 24 and walnames.is_wal_name(path.name, SEG)):
            continue
        shutil.copy2(path, dest / path.name)
        names.append(path.name)
    return names


# --- pg_waldump ------------------------------------------------------------------
def test_waldump_parses_commit_lines():
    line = ("rmgr: Transaction len (rec/tot):     34/    34, tx:        730, lsn: 0/00E10120, "
            "prev 0/00E100E0, desc: COMMIT 2026-11-27 10:19:39.584093 UTC")
    commit = waldump.parse_commit_line(line)
    assert commit is not None
    assert (commit.lsn, commit.xid, commit.at.isoformat()) == (0xE10120, 730, "2026-11-27T10:19:39.584093+00:00")
    # PostgreSQL's xact_desc for COMMIT_PREPARED: "<prepared xid>: <timestamp>; ..." (a commit for recovery targets)
    prepared = waldump.parse_commit_line(
        "rmgr: Transaction len (rec/tot):     58/    58, tx:          0, lsn: 1/0000A0C8, prev 1/0000A090, "
        "desc: COMMIT_PREPARED 741: 2026-11-27 10:19:40.000001 UTC; inval msgs: catcache 7")
    assert prepared is not None and (prepared.lsn, prepared.xid) == ((1 << 32) + 0xA0C8, 741)
    abort = line.replace("COMMIT", "ABORT")
    assert waldump.parse_commit_line(abort) is None
    with pytest.raises(waldump.WalDumpError, match="zone"):
        waldump.parse_commit_line(line.replace(" UTC", " CET"))


def test_waldump_reads_exact_commit_times_from_segments_and_partial(fleet, primary):
    first_id = max_id(primary)
    generate(rate=3000, duration=1.0)
    switch_wal(primary)
    generate(rate=200, duration=0.5)  # these stay in the .partial
    wait_flushed(primary)
    expected = commit_times(primary, first_id)
    assert len(expected) >= 5
    found = {}
    for path in sorted(archive().iterdir()):
        wal = walnames.parse_wal_name(path.name, SEG)
        if wal.kind not in ("segment", "partial"):
            continue
        for c in waldump.read_commits(path, wal.timeline, wal.segno, SEG).commits:
            found[c.xid] = c.at
    missing = {xid: at for xid, at in expected.items() if found.get(xid) != at}
    assert not missing, f"commits not found with their exact time by pg_waldump: {missing}"


def test_waldump_partial_is_incremental(fleet, primary):
    wait_flushed(primary)
    path = current_partial()
    wal = walnames.parse_wal_name(path.name, SEG)
    first = waldump.read_commits(path, wal.timeline, wal.segno, SEG)
    assert not first.reached_end and first.stopped_by, "a partial ends where the capturer stopped writing"
    assert wal.start_lsn(SEG) < first.scanned_to < wal.end_lsn(SEG)
    again = waldump.read_commits(path, wal.timeline, wal.segno, SEG, start=first.scanned_to)
    assert again.commits == [] and again.scanned_to == first.scanned_to
    xid = primary.execute("INSERT INTO test_data (payload) VALUES ('incr') RETURNING xmin::text::bigint").fetchone()[0]
    wait_flushed(primary)
    # Should the partial have filled up meanwhile, its data is in the complete file.
    now = path if path.exists() else archive() / path.name.removesuffix(".partial")
    more = waldump.read_commits(now, wal.timeline, wal.segno, SEG, start=first.scanned_to)
    assert [c.xid for c in more.commits] == [xid]
    assert more.scanned_to > first.scanned_to


# --- the indexer ----------------------------------------------------------------------
def test_segments_and_partial_indexed_with_sha256_and_commit_ranges(fleet, primary, empty_catalog):
    first_id = max_id(primary)
    generate(rate=3000, duration=1.5)
    switch_wal(primary)
    generate(rate=100, duration=0.5)
    wait_flushed(primary)
    expected = commit_times(primary, first_id)

    result = index_archive()
    assert result.new >= 2 and not result.errors, result

    complete = list(WalSegment.objects.filter(is_partial=False))
    assert complete, "complete segments are cataloged"
    for seg in complete:
        path = archive() / seg.name
        if path.exists():
            assert seg.sha256 == sha256(path), f"sha256 of {seg.name}"
            assert seg.size == SEG and seg.scanned_to == seg.end_lsn
        assert seg.end_lsn - seg.start_lsn == SEG
        assert seg.name == walnames.segment_name(seg.timeline, seg.segno, SEG)
    partial = WalSegment.objects.get(is_partial=True, in_local_archive=True)
    assert partial.sha256 == "" and 0 < partial.size < SEG
    assert partial.size == partial.scanned_to - partial.start_lsn

    # Every generated commit lies inside the commit-time range of the segment holding it.
    by_xid = {}
    for seg in WalSegment.objects.filter(in_local_archive=True):
        path = archive() / seg.file_name
        for c in waldump.read_commits(path, seg.timeline, seg.segno, SEG).commits:
            by_xid[c.xid] = seg
    for xid, at in expected.items():
        seg = by_xid[xid]
        assert seg.first_commit_at <= at <= seg.last_commit_at, f"xid {xid} at {at} outside {seg}"
    assert WalSegment.objects.filter(last_commit_at__gte=max(expected.values())).exists()


def test_partial_grows_then_turns_complete_in_the_same_row(fleet, primary, empty_catalog):
    switch_wal(primary)  # a fresh, nearly empty partial: the rows below fit in it
    primary.execute("INSERT INTO test_data (payload) VALUES ('opens the next partial')")
    wait_flushed(primary)
    index_archive()
    row = WalSegment.objects.filter(is_partial=True).order_by("-timeline", "-segno").first()
    assert row is not None
    size_before, scanned_before = row.size, row.scanned_to
    hashed_before = os.stat(archive() / row.file_name).st_size
    assert hashed_before == SEG, "pg_receivewal pads a partial to the full segment size"

    first_id = max_id(primary)
    primary.execute("INSERT INTO test_data (payload) SELECT md5(g::text) FROM generate_series(1, 200) g")
    wait_flushed(primary)
    (xid, committed), = commit_times(primary, first_id).items()
    result = index_archive()
    row.refresh_from_db()
    assert row.is_partial and result.updated >= 1 and result.hashed == 0
    assert row.size > size_before and row.scanned_to > scanned_before
    # Our commit is in the partial's commit-time range; it need not be the last one (autoanalyze of
    # test_data after these 200 rows, for one, commits too).
    assert row.first_commit_at <= committed <= row.last_commit_at

    name = switch_wal(primary)
    assert name == row.name
    result = index_archive()
    assert not result.errors, result
    row.refresh_from_db()
    assert WalSegment.objects.filter(timeline=row.timeline, segno=row.segno).count() == 1
    assert result.completed == 1 and result.hashed == 1
    assert not row.is_partial and row.sha256 == sha256(archive() / row.name)
    assert row.size == SEG and row.scanned_to == row.end_lsn
    assert row.last_commit_at >= committed


def test_junk_files_are_ignored_with_one_warning_each(fleet, empty_catalog, tmp_path, caplog):
    copy_archive(tmp_path)
    junk = [f"notes-{uuid.uuid4().hex}.txt", "0000000100000000000000ff", f"{uuid.uuid4().hex[:8].upper()}.history"]
    for name in junk:
        (tmp_path / name).write_text("not WAL\n")
    (tmp_path / "subdir").mkdir()
    caplog.set_level(logging.WARNING, logger="walcatalog")
    first = index_archive(tmp_path)
    second = index_archive(tmp_path)
    assert first.junk == second.junk == len(junk)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "ignoring" in r.getMessage()]
    for name in junk[::2]:  # unique names: no earlier test warned about them
        assert sum(name in w for w in warnings) == 1, warnings
    assert WalSegment.objects.filter(in_local_archive=True).count() == len(
        [n for n in os.listdir(tmp_path) if walnames.is_wal_name(n, SEG) and not n.endswith(".history")])


def test_deleted_segment_in_the_middle_is_a_gap(fleet, primary, empty_catalog, tmp_path):
    for _ in range(3):
        switch_wal(primary)
    names = copy_archive(tmp_path, complete_only=True)
    assert len(names) >= 6
    result = index_archive(tmp_path)
    assert result.new == len(names) and catalog.gaps() == []

    victim, second = names[2], names[-2]
    (tmp_path / victim).unlink()
    (tmp_path / second).unlink()
    result = index_archive(tmp_path)
    assert result.vanished == 2
    found = catalog.gaps()
    wal = walnames.parse_wal_name(victim, SEG)
    wal2 = walnames.parse_wal_name(second, SEG)
    assert [(g.timeline, g.first, g.last) for g in found] == [(1, wal.segno, wal.segno), (1, wal2.segno, wal2.segno)]
    assert found[0].first_name == victim and victim in found[0].text
    assert catalog.gaps(timeline=1) == found and catalog.gaps(timeline=7) == []
    window = catalog.recoverable_window()
    assert window is not None and window.limited_by_gap == found[0]
    assert window.end_lsn <= found[0].start_lsn

    # Copied back unchanged: no longer a gap, and not re-read as new data.
    shutil.copy2(archive() / victim, tmp_path / victim)
    shutil.copy2(archive() / second, tmp_path / second)
    result = index_archive(tmp_path)
    assert result.new == 0 and result.updated == 2
    assert catalog.gaps() == []


def test_timeline_history_is_parsed_into_timeline_rows(fleet, empty_catalog, tmp_path):
    copy_archive(tmp_path, complete_only=True)
    # Timeline 3 branched from 2, which branched from 1 inside the WAL held here (issue 10: a history must
    # be consistent with the catalog, so its parent's history comes along).
    (tmp_path / "00000002.history").write_text("1\t0/1000028\tno recovery target specified\n")
    history = "1\t0/1000028\tno recovery target specified\n\n2\t0/3000000\tbefore 2026-11-27 10:00:00+00\n"
    (tmp_path / "00000003.history").write_text(history)
    result = index_archive(tmp_path)
    assert result.timelines == 2 and not result.errors
    t3 = Timeline.objects.get(tli=3)
    assert (t3.parent_tli, t3.switch_lsn_text, t3.history) == (2, "0/3000000", history)
    assert t3.history_sha256 == hashlib.sha256(history.encode()).hexdigest()
    assert Timeline.objects.filter(tli=1).exists(), "a row for each timeline that has segments"
    again = index_archive(tmp_path)
    assert again.timelines == 0, "an unchanged history file is not parsed again"


def test_second_pass_with_nothing_new_hashes_nothing(fleet, primary, empty_catalog, monkeypatch):
    wait_flushed(primary)
    first = index_archive()
    assert first.new > 0
    calls = []
    real = storage.sha256_file
    monkeypatch.setattr(storage, "sha256_file", lambda path: calls.append(path) or real(path))
    files = [n for n in os.listdir(archive()) if walnames.is_wal_name(n, SEG)]
    second = index_archive()
    assert calls == [] and second.hashed == 0, f"the second pass hashed {calls}"
    assert second.new == 0 and second.unchanged + second.updated == len(files)
    assert second.dumped <= 1, "at most the growing partial is read again"


def test_two_indexers_at_once_make_no_duplicates(fleet, primary, transactional_db):
    switch_wal(primary)
    WalSegment.objects.all().delete()
    expected = {(w.timeline, w.segno) for w in (walnames.parse_wal_name(n, SEG) for n in os.listdir(archive()))
                if w.kind in ("segment", "partial")}
    results, errors = [], []
    barrier = threading.Barrier(2)

    def run():
        try:
            barrier.wait(10)
            results.append(index_archive())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()  # each thread had its own connection

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and len(results) == 2
    keys = list(WalSegment.objects.values_list("timeline", "segno"))
    assert len(keys) == len(set(keys)) and expected <= set(keys)
    assert sum(r.new for r in results) == len(keys), "every row created by exactly one of them"

    # And two processes, as beat and a user's `index_wal` would be.
    WalSegment.objects.all().delete()
    procs = [subprocess.Popen([sys.executable, str(PROJECT / "manage.py"), "index_wal"], env=subprocess_env(),
                              cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    keys = list(WalSegment.objects.values_list("timeline", "segno"))
    assert len(keys) == len(set(keys)) and expected <= set(keys)


def test_walstatus_json_shows_segments_partial_and_no_gaps(fleet, primary, transactional_db):
    generate(rate=2000, duration=1.0)
    switch_wal(primary)
    primary.execute("INSERT INTO test_data (payload) VALUES ('in the partial')")
    wait_flushed(primary)
    manage("index_wal")
    status = json.loads(manage("walstatus", "--json").stdout)
    (tl,) = [t for t in status["timelines"] if t["timeline"] == 1]
    assert tl["complete"] >= 2 and status["segment_size"] == SEG
    assert status["partial"]["name"].endswith(".partial") and status["partial"]["size"] > 0
    assert status["gaps"] == []
    assert status["window"]["based_on"] in ("oldest segment", "base backup")
    assert status["capturer"]["state"] == "running" and status["capturer"]["streaming"]
    size = status["partial"]["size"]
    primary.execute("INSERT INTO test_data (payload) SELECT md5(g::text) FROM generate_series(1, 100) g")
    wait_flushed(primary)
    manage("index_wal")
    grown = json.loads(manage("walstatus", "--json").stdout)["partial"]
    assert grown["name"] != status["partial"]["name"] or grown["size"] > size
    text = manage("walstatus").stdout
    assert "partial" in text and "gaps             none" in text


def test_killed_capturer_restarts_and_leaves_no_gap(fleet, primary, empty_catalog):
    index_archive()
    old_pid = fleet.pid("capturer")
    fleet.kill("capturer")
    wait_for(lambda: fleet.state("capturer") == "running" and fleet.pid("capturer") != old_pid, 60,
             "the supervisor to restart the capturer")
    for _ in range(2):
        generate(rate=2000, duration=0.5)
        switch_wal(primary)
    wait_flushed(primary)
    result = index_archive()
    assert not result.errors, result
    assert catalog.gaps() == []
    assert capture_summary()["restarts"] >= 1


def test_segment_size_comes_from_the_primary_and_falls_back_to_the_archive(fleet, settings):
    segsize._segment_size = None
    try:
        assert catalog.segment_size() == SEG
        segsize._segment_size = None
        settings.PITR_PRIMARY_PORT = _closed_port()  # a primary that does not answer
        assert segsize._size_from_primary() is None
        assert segsize._size_from_archive(archive()) == SEG
    finally:
        segsize._segment_size = None


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_restore_points_are_cataloged(fleet, primary, empty_catalog):
    name = f"walcat-{uuid.uuid4().hex[:8]}"
    lsn = primary.execute("SELECT pg_create_restore_point(%s)::text", [name]).fetchone()[0]
    wait_flushed(primary)
    index_archive()
    point = RestorePoint.objects.get(name=name)
    # pg_create_restore_point returns the end of its record; the record starts before it.
    assert point.lsn < walnames.parse_lsn(lsn) and point.timeline == 1
    assert point.segment is not None and point.segment.start_lsn <= point.lsn < point.segment.end_lsn


def test_archive_that_does_not_exist_is_a_one_line_error(db, tmp_path):
    from pitrsite.errors import PitrError

    with pytest.raises(PitrError, match="does not exist"):
        index_archive(tmp_path / "nope")
    result = manage("index_wal", "--archive", str(tmp_path / "nope"), check=False)
    assert result.returncode != 0 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_task_skips_while_another_pass_holds_the_lock(fleet, empty_catalog, caplog):
    from pitrsite import locks
    from walcatalog.tasks import index_wal

    caplog.set_level(logging.INFO, logger="walcatalog")
    with locks.INDEX.held():  # what a slow earlier pass holds
        assert index_wal() is None
    assert WalSegment.objects.count() == 0
    assert any("skipped" in r.getMessage() for r in caplog.records)
    done = index_wal()  # lock free again: a normal pass
    assert done is not None and done["new"] > 0 and WalSegment.objects.exists()


def test_real_timeline_switch_leaves_no_gap(db, second_fleet):
    """Promote a standby of a private fleet, capture follows it: both timelines hold together, no gap."""
    from fleet import pg
    from tests.restore_helpers import write_rows
    from tests.test_timeline_switch import capture_lag, fail_over

    driver = second_fleet
    with pg.connect(driver.layout.port("primary")) as conn:
        write_rows(conn, 4, "walcat-tl1", switch_every=2)
    fail_over(driver)
    with pg.connect(driver.layout.port("standby")) as conn:
        write_rows(conn, 4, "walcat-tl2", switch_every=2)
        wait_for(lambda: capture_lag(conn) == 0, 30, "the capturer to follow the new primary")
    result = index_archive()
    assert not result.errors and result.timelines == 1, result
    tl2 = Timeline.objects.get(tli=2)
    switch_seg = walnames.segment_of_lsn(tl2.switch_lsn, SEG)
    assert WalSegment.objects.filter(timeline=2, segno=switch_seg).exists(), "timeline 2 starts at its switch"
    assert catalog.gaps() == []
    status = catalog.summary(with_fleet=False)
    assert [t["timeline"] for t in status["timelines"]] == [1, 2]
    assert status["timelines"][1]["parent"] == 1 and status["partial"]["timeline"] == 2
    # Timeline 2's first segment gone: the switch is no longer covered.
    WalSegment.objects.filter(timeline=2, segno=switch_seg).update(in_local_archive=False)
    assert [(g.timeline, g.first) for g in catalog.gaps()] == [(2, switch_seg)]
