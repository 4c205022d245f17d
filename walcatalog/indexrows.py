"""What an index pass compares: the archive directory's listing and the catalog rows, read cheaply.

A pass runs every few seconds over every row, so rows come back as plain tuples from one raw query,
and a file's full row is loaded only when the file is new or changed.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.db import connection

from walcatalog import waldump
from walcatalog.models import WalSegment

log = logging.getLogger("walcatalog.indexer")
# Junk file names already warned about by this process: one warning each, not one per pass.
_warned: set[str] = set()


@dataclass(frozen=True)
class File:
    name: str
    path: Path
    size: int
    mtime_ns: int


@dataclass
class Row:
    """What indexing a new or changed file needs of its row (loaded only for those files)."""

    id: int
    timeline: int
    segno: int
    name: str
    is_partial: bool
    size: int
    mtime_ns: int
    scanned_to: int
    start_lsn: int
    end_lsn: int
    in_local_archive: bool


# What the fast path compares, per file name: (id, is_partial, size, mtime_ns, in_local_archive, unfinished).
# Plain tuples from raw SQL: this runs every few seconds over every row; model instances cost 10x.
Brief = tuple[int, bool, int, int, bool, bool]
ROW_FIELDS = ("id", "timeline", "segno", "name", "is_partial", "size", "mtime_ns", "scanned_to", "start_lsn",
               "end_lsn", "in_local_archive")


def load_rows() -> dict[str, Brief]:
    table = WalSegment._meta.db_table
    with connection.cursor() as cur:
        cur.execute(f"SELECT name, is_partial, id, size, mtime_ns, in_local_archive, scanned_to < end_lsn "
                    f"FROM {table}")
        return {(name + ".partial" if partial else name): (id_, bool(partial), size, mtime, bool(local),
                                                           bool(unfinished))
                for name, partial, id_, size, mtime, local, unfinished in cur.fetchall()}


def full_row(row_id: int) -> Row | None:
    values = WalSegment.objects.filter(pk=row_id).values_list(*ROW_FIELDS).first()
    return Row(*values) if values else None


def list_archive(archive: Path) -> dict[str, tuple[str, int, int]]:
    """name -> (path, size, mtime_ns) of every regular file (strings, not Paths: 100k of them)."""
    files = {}
    with os.scandir(archive) as entries:
        for entry in entries:
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except FileNotFoundError:  # renamed or removed while we listed
                continue
            files[entry.name] = (entry.path, st.st_size, st.st_mtime_ns)
    return files


def ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


def commit_fields(dump: waldump.DumpResult, row: Row | None) -> dict:
    """first/last commit and count after adding this dump's commits to what the row had."""
    if row is None:
        first = last = last_lsn = None
        count = 0
    else:
        first, last, last_lsn, count = (WalSegment.objects.filter(pk=row.id).values_list(
            "first_commit_at", "last_commit_at", "last_commit_lsn", "commit_count").first() or (None, None, None, 0))
    for c in dump.commits:
        first = c.at if first is None or c.at < first else first
        last = c.at if last is None or c.at > last else last
        last_lsn = c.lsn if last_lsn is None or c.lsn > last_lsn else last_lsn
    return dict(first_commit_at=first, last_commit_at=last, last_commit_lsn=last_lsn,
                commit_count=count + len(dump.commits))


def warn_junk(name: str, why: str) -> None:
    if name not in _warned:
        _warned.add(name)
        log.warning("ignoring %s in the WAL archive: %s", name, why)
