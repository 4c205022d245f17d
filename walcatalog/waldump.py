"""Commit records and named restore points of one WAL segment, read with ``pg_waldump``.

pg_waldump only opens files named like complete segments, and a segment's
last record may continue into the next file. So every run gets a private
directory of symlinks: the segment under its complete name (even when the
file is a growing ``.partial``) and, when we have it, its successor, so a
commit record crossing the boundary is still read.

A ``.partial`` ends in zeros where the capturer has not written yet; there
pg_waldump stops with an error ("invalid record length at X"). That is the
expected end of a partial, not a failure: the records printed before it are
kept, and the next pass starts where this one stopped.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from fleet import pg
from pitrsite import runner
from pitrsite.errors import WalDumpError
from walcatalog import walnames

# Extra bytes read past the segment end (from the successor) so that a commit
# record starting near the end of the segment is read whole. Commit records
# are small; one with thousands of dropped relations could exceed this, and is
# then missed from the commit-time index (never from the archive itself).
CROSSING_MARGIN = 64 * 1024

# A COMMIT_PREPARED record ends a prepared transaction: recovery_target_time
# stops on it exactly as on a COMMIT, so it counts as a commit here. Aborts do not.
_RECORD_RE = re.compile(
    r"^rmgr: Transaction\s+len \(rec/tot\):\s*\d+/\s*\d+, tx:\s*(\d+), lsn: ([0-9A-F]+/[0-9A-F]+), "
    r"prev [0-9A-F]+/[0-9A-F]+, desc: (COMMIT|COMMIT_PREPARED) (?:(\d+): )?"
    r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,6})?) (\S+?)(?:;|$)"
)
_RESTORE_POINT_RE = re.compile(
    r"^rmgr: XLOG\s+len \(rec/tot\):\s*\d+/\s*\d+, tx:\s*\d+, lsn: ([0-9A-F]+/[0-9A-F]+), "
    r"prev [0-9A-F]+/[0-9A-F]+, desc: RESTORE_POINT (.*)$"
)
_LAST_GOOD_RE = re.compile(r"error in WAL record at ([0-9A-F]+/[0-9A-F]+)")
# After the last complete record of a zero-padded .partial the next header reads as zeros.
_END_OF_DATA_RE = re.compile(r"invalid record length at ([0-9A-F]+/[0-9A-F]+)")


@dataclass(frozen=True)
class Commit:
    lsn: int
    xid: int
    at: datetime  # aware, UTC, microsecond precision as PostgreSQL records it


@dataclass(frozen=True)
class RestorePoint:
    lsn: int
    name: str


@dataclass
class DumpResult:
    """What one pg_waldump run found between ``start`` and ``scanned_to``."""

    start: int
    # Every record that starts before this LSN has been read; the next run starts here.
    scanned_to: int
    commits: list[Commit] = field(default_factory=list)
    restore_points: list[RestorePoint] = field(default_factory=list)
    reached_end: bool = False  # read up to the requested end without an error
    stopped_by: str = ""  # pg_waldump's error line when it stopped early (normal for a .partial)


def parse_commit_line(line: str) -> Commit | None:
    """The commit in one line of pg_waldump output, or None for any other record."""
    m = _RECORD_RE.match(line)
    if m is None:
        return None
    tx, lsn, kind, prepared_xid, stamp, zone = m.groups()
    if zone != "UTC":  # we run pg_waldump with TZ=UTC; anything else would be misread
        raise WalDumpError(f"pg_waldump printed a commit time in zone {zone!r}, expected UTC: {line.strip()}")
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in stamp else "%Y-%m-%d %H:%M:%S"
    at = datetime.strptime(stamp, fmt).replace(tzinfo=timezone.utc)
    xid = int(prepared_xid) if kind == "COMMIT_PREPARED" and prepared_xid else int(tx)
    return Commit(walnames.parse_lsn(lsn), xid, at)


def parse_restore_point_line(line: str) -> RestorePoint | None:
    """The named restore point (pg_create_restore_point) in one line of output, if any."""
    m = _RESTORE_POINT_RE.match(line)
    return RestorePoint(walnames.parse_lsn(m.group(1)), m.group(2)) if m else None


def _scanned_to(stderr: str, start: int, end: int, reached_end: bool) -> int:
    if reached_end:
        return end
    m = _END_OF_DATA_RE.search(stderr)
    if m:  # exact: the next record would start here
        return max(start, walnames.parse_lsn(m.group(1)))
    m = _LAST_GOOD_RE.search(stderr)
    if m:  # the last record read starts here; anything after it is still to read
        return max(start, walnames.parse_lsn(m.group(1)) + 1)
    return start


def read_commits(path: Path, timeline: int, segno: int, segment_size: int, *,
                 start: int | None = None, successor: Path | None = None, timeout: float = 300) -> DumpResult:
    """Commit records starting in segment ``segno`` at or after ``start``.

    ``path`` may be a complete segment or a ``.partial``; ``successor`` is the
    next segment's file (complete or partial) when the archive has it.
    """
    seg_start = walnames.segment_start_lsn(segno, segment_size)
    seg_end = seg_start + segment_size
    start = seg_start if start is None else max(start, seg_start)
    if start >= seg_end:
        return DumpResult(start, seg_end, reached_end=True)
    end = seg_end + (CROSSING_MARGIN if successor is not None else 0)
    with tempfile.TemporaryDirectory(prefix="pitr-waldump-") as tmp:
        (Path(tmp) / walnames.segment_name(timeline, segno, segment_size)).symlink_to(Path(path).resolve())
        if successor is not None:
            (Path(tmp) / walnames.segment_name(timeline, segno + 1, segment_size)).symlink_to(
                Path(successor).resolve())
        argv = [pg.tool("pg_waldump"), "--path", tmp, "--timeline", str(timeline),
                "--start", walnames.format_lsn(start), "--end", walnames.format_lsn(end), "--rmgr", "Transaction",
                "--rmgr", "XLOG"]
        try:
            proc = runner.run(argv, step="reading WAL (pg_waldump)", cwd=tmp, timeout=timeout, check=False,
                              env={"TZ": "UTC"})
        except runner.ToolFailed as exc:
            raise WalDumpError(f"pg_waldump on {path.name}: {exc.reason}") from None
    commits, points = [], []
    for line in proc.stdout.splitlines():
        # Records past the segment end belong to the successor; it gets its own run.
        if line.startswith("rmgr: Transaction"):
            commit = parse_commit_line(line)
            if commit is not None and start <= commit.lsn < seg_end:
                commits.append(commit)
        elif "desc: RESTORE_POINT " in line:
            point = parse_restore_point_line(line)
            if point is not None and start <= point.lsn < seg_end:
                points.append(point)
    reached_end = proc.returncode == 0
    stderr = proc.stderr.strip()
    if not reached_end and not stderr:
        raise WalDumpError(f"pg_waldump on {path.name} exited {proc.returncode} without a message")
    scanned = _scanned_to(stderr, start, seg_end, reached_end)
    # Past the segment end only the successor's bytes were read.
    scanned = min(scanned, seg_end)
    return DumpResult(start, scanned, commits, points, reached_end, "" if reached_end else runner.error_line(stderr))
