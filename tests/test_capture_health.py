"""Capture that has stopped never reads as healthy: a dropped slot, a full archive disk, a bad file where
the next segment goes. Each test breaks a private fleet of its own (own home, ports and archive), never the
session fleet; status commands must then exit non-zero with the reason.
"""
from __future__ import annotations

import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import wait_for

pytestmark = [pytest.mark.fleet]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def private_fleet(settings, fleet, request):
    """A whole fleet of its own, under the test data home (the server account must reach it)."""
    from fleet import pg
    from fleet.local import LocalDriver

    home = Path(settings.PITR_HOME) / "private" / request.node.name[:40].replace("[", "-").replace("]", "")
    home.mkdir(parents=True)
    pg.give_to_server(home.parent, home)
    settings.PITR_HOME, settings.PITR_WAL_ARCHIVE, settings.PITR_BACKUP_DIR = \
        home, home / "wal_archive", home / "backups"
    settings.PITR_PRIMARY_PORT, settings.PITR_STANDBY_PORT, settings.PITR_RESTORE_PORT = \
        _free_port(), _free_port(), _free_port()
    driver = LocalDriver()
    yield driver
    for role in ("capturer", "standby", "restore_target", "primary"):
        try:
            if driver.state(role) == "paused":
                driver.resume(role)
            driver.stop(role) if role == "capturer" else driver.stop(role, mode="immediate")
        except Exception:  # noqa: BLE001 - best effort: the next test has its own fleet
            pass
    for mount in (home / "wal_archive", home / "backups"):
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@contextmanager
def tmpfs(path: Path, size: str):
    from fleet import pg

    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"mount -t tmpfs failed ({result.stderr.strip()}): the disk-full tests need root")
    pg.give_to_server(path)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def status(driver):
    from fleet.status import capture_problem, fleet_status

    result = fleet_status(driver)
    return result, capture_problem(result)


def wait_streaming(driver, timeout: float, what: str) -> None:
    """Until capture streams; a timeout says what capture reported last and how its log ends."""
    seen: dict = {}

    def streaming() -> bool:
        seen.update(status(driver)[0]["capturer"])
        return seen["health"] == "streaming"

    def last() -> str:
        log = driver.layout.logfile("capturer")
        tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else ["(no capturer log)"]
        return f"{seen.get('health')} ({seen.get('reason')}); capturer log ends: {' | '.join(tail)}"

    wait_for(streaming, timeout, what, detail=last)


def write_wal(driver, megabytes: int) -> None:
    """Commit about `megabytes` MiB of WAL on the private primary (md5 text does not compress away)."""
    from fleet import pg

    with pg.connect(driver.layout.port("primary")) as conn:
        for _ in range(megabytes):
            conn.execute("INSERT INTO test_data (payload) SELECT string_agg(md5(random()::text), '') "
                         "FROM generate_series(1, 32000)")


def command_fails(*args: str) -> str:
    """Run a status command in-process; it must exit non-zero (CommandError) and say why in one line."""
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError) as raised:
        call_command(*args, stdout=StringIO(), stderr=StringIO())
    text = str(raised.value)
    assert "\n" not in text
    return text


def test_healthy_capture_streams_and_status_exits_zero(private_fleet):
    from io import StringIO

    from django.core.management import call_command

    private_fleet.up()
    wait_streaming(private_fleet, 30, "capture to stream")
    result, problem = status(private_fleet)
    assert problem is None and result["capturer"]["lag_seconds"] is not None
    assert {"archive", "backups", "restore_target"} <= set(result["disk"])
    call_command("fleet", "status", stdout=StringIO())  # no CommandError


def test_dropped_slot_is_broken_and_names_the_lost_range(private_fleet):
    from fleet import pg

    private_fleet.up()
    wait_streaming(private_fleet, 30, "capture to stream")
    private_fleet.stop("capturer")
    with pg.connect(private_fleet.layout.port("primary"), dbname="postgres") as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", ["pitr_slot"])
    private_fleet.start("capturer")
    result, problem = status(private_fleet)
    assert result["capturer"]["health"] == "broken"
    assert "replication slot pitr_slot is missing" in problem and "new base backup" in problem
    assert result["capturer"]["lost_after"]
    assert "pitr_slot is missing" in command_fails("fleet", "status")


def test_full_archive_disk_reads_stopped_with_the_reason(private_fleet):
    with tmpfs(private_fleet.layout.archive, "6m"):
        private_fleet.up()
        write_wal(private_fleet, 10)  # 1 MiB segments: the sixth does not fit

        def not_streaming():
            result, problem = status(private_fleet)
            return problem if result["capturer"]["health"] == "retrying" and \
                "No space left on device" in (result["capturer"]["last_error"] or "") else None

        problem = wait_for(not_streaming, 60, "capture to report the full disk")
        assert "No space left on device" in problem
        result, _ = status(private_fleet)
        assert result["disk"]["archive"]["free_bytes"] < 2 << 20
        assert "No space left on device" in command_fails("fleet", "status")


def test_zero_filled_next_segment_stops_capture_and_says_so(private_fleet):
    from fleet.status import newest_archived

    private_fleet.up()
    write_wal(private_fleet, 1)
    wait_streaming(private_fleet, 30, "capture to stream")
    private_fleet.stop("capturer")
    archive = private_fleet.layout.archive
    name = newest_archived(archive)[:24]  # the .partial being written
    nxt = f"{name[:16]}{int(name[16:], 16) + 1:08X}"
    (archive / nxt).write_bytes(bytes(1 << 20))  # a full-size, zero-filled file under the next segment's name
    private_fleet.start("capturer")

    def refused():
        result, problem = status(private_fleet)
        return problem if result["capturer"]["health"] == "retrying" and result["capturer"]["last_error"] else None

    problem = wait_for(refused, 60, "capture to report why it cannot start")
    assert "ahead of the WAL flush position" in problem, problem


def test_backup_that_cannot_fit_is_refused_in_one_line(private_fleet, transactional_db):
    from pitrsite.errors import PitrError
    from pitrsite.jobs import JobReporter, JobState
    from walcatalog.backups import queue_backup, run_backup

    private_fleet.up()
    with tmpfs(private_fleet.layout.backups, "2m"):
        backup = queue_backup("zstd")
        with pytest.raises(PitrError, match=r"^failure checking free space \(the backup needs about"):
            run_backup(backup, JobReporter(backup))
        backup.refresh_from_db()
        assert backup.state == JobState.FAILED and backup.error.startswith("failure checking free space")
        assert "MiB free" in backup.error
        assert not any(private_fleet.layout.backups.iterdir())


def test_fleet_up_recreates_the_slot_only_while_the_wal_is_held(private_fleet, settings):
    from fleet import pg
    from pitrsite.errors import FleetError

    def drop_slots() -> None:
        """No slot at all (the standby's would keep the WAL for us too): stop their clients first."""
        private_fleet.stop("capturer")
        private_fleet.stop("standby", mode="immediate")
        with pg.connect(private_fleet.layout.port("primary"), dbname="postgres") as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")

    private_fleet.up()
    wait_streaming(private_fleet, 30, "capture to stream")
    drop_slots()
    private_fleet.up()  # the primary still holds everything: the slot is recreated and capture continues
    wait_streaming(private_fleet, 60, "capture to stream again")
    drop_slots()
    with pg.connect(private_fleet.layout.port("primary")) as conn:
        for _ in range(5):  # switch and checkpoint: the primary recycles WAL no slot holds
            conn.execute("INSERT INTO test_data (payload) SELECT repeat('x', 500) FROM generate_series(1, 200)")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
    with pytest.raises(FleetError, match="no longer holds WAL .* is lost"):
        private_fleet.up()
    with pg.connect(private_fleet.layout.port("primary"), dbname="postgres") as conn:
        assert not conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s",
                                [settings.PITR_CAPTURE_SLOT]).fetchone()


def test_paused_capturer_lag_counts_the_seconds_since_it_last_received(private_fleet):
    """A capturer paused on an idle primary holds everything so far, but receives nothing more: its lag must not
    read 0 ms (an honest RPO), in status and in what the dashboard and /metrics show."""
    import time

    private_fleet.up()
    wait_streaming(private_fleet, 30, "capture to stream")
    private_fleet.pause("capturer")
    try:
        time.sleep(12)  # pg_receivewal answers every 10 s while idle: its last answer is older than 2 s now
        capture = status(private_fleet)[0]["capturer"]
        assert capture["health"] == "paused" and capture["lag_seconds"] >= 2.0, capture
    finally:
        private_fleet.resume("capturer")
    wait_for(lambda: status(private_fleet)[0]["capturer"]["lag_seconds"] == 0.0, 30, "lag back to 0 once caught up")


def test_only_a_partial_of_zeros_is_cleared_before_pg_receivewal_starts(tmp_path):
    from fleet.supervise import clear_unwritten_partials

    torn, empty, written = (tmp_path / f"00000001000000000000000{n}.partial" for n in (3, 4, 2))
    torn.write_bytes(bytes(630784))
    empty.write_bytes(b"")
    written.write_bytes(bytes(4096) + b"\x01" + bytes(4095))  # WAL, however little: kept
    (tmp_path / "000000010000000000000001").write_bytes(bytes(8192))  # a complete segment: never touched
    assert clear_unwritten_partials(tmp_path) == [f"{torn.name} (630784 bytes)", f"{empty.name} (0 bytes)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000010000000000000001", written.name]


def test_a_partial_begun_but_never_written_does_not_stop_capture(private_fleet, settings):
    """pg_receivewal fills a new .partial with zeros before it writes WAL to it; stopped meanwhile, it leaves a
    file of neither 0 bytes nor a whole segment, on which it refuses to start ("has 630784 bytes, should be 0
    or 1048576": the one CI flake of the test above). Such a file holds no WAL: it goes before pg_receivewal
    starts, which streams that segment again through its slot."""
    size = settings.PITR_WAL_SEGSIZE_MB << 20  # initdb --wal-segsize
    private_fleet.up()
    wait_streaming(private_fleet, 30, "capture to stream")
    write_wal(private_fleet, 1)
    private_fleet.stop("capturer")
    from walcatalog import walnames

    archive = private_fleet.layout.archive
    newest = max(p.name for p in archive.iterdir() if walnames.is_wal_name(p.name.removesuffix(".partial"), size))
    if newest.endswith(".partial"):  # its WAL is streamed again from the slot
        partial = archive / newest
    else:  # stopped between two segments: the next one begun
        segment = walnames.parse_wal_name(newest, size)
        partial = archive / f"{walnames.segment_name(segment.timeline, segment.segno + 1, size)}.partial"
    partial.write_bytes(bytes(630784))  # as pg_receivewal leaves it when stopped while filling it
    private_fleet.up()
    wait_streaming(private_fleet, 30, "capture to stream again past the unwritten .partial")
    complete = partial.with_suffix("")  # the segment may have filled up since

    def streamed_again():
        return next((p for p in (partial, complete) if p.exists() and p.stat().st_size == size), None)

    with open(wait_for(streamed_again, 30, "the segment to be streamed again"), "rb") as fh:
        assert fh.read(8192) != bytes(8192)  # its WAL is back, from the primary
    log = private_fleet.layout.logfile("capturer").read_text()
    assert f"removed {partial.name} (630784 bytes)" in log
