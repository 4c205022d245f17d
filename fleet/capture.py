"""Where capture continues from, and what WAL is lost when the primary no longer holds it.

Names only (fleet sits below walcatalog, whose walnames module is the full parser): enough to find where
pg_receivewal restarts in its archive and whether the primary still has that WAL.
"""
from __future__ import annotations

import re
from pathlib import Path

import psycopg

from fleet import pg
from pitrsite.errors import FleetError

WAL_NAME = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$")


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _segno(name: str, segsize: int) -> tuple[int, int, bool] | None:
    """(timeline, segment number, partial) of a WAL file name, None for anything else."""
    match = WAL_NAME.match(name)
    if not match:
        return None
    return int(match[1], 16), int(match[2], 16) * (0x100000000 // segsize) + int(match[3], 16), bool(match[4])


def restart_point(archive: Path, segsize: int) -> int | None:
    """Where pg_receivewal restarts: the start of the newest partial, else the end of the newest segment."""
    try:
        names = [p.name for p in archive.iterdir()]
    except OSError:
        return None
    newest = max((p for p in (_segno(n, segsize) for n in names) if p), default=None, key=lambda p: (p[1], not p[2]))
    if newest is None:
        return None
    return newest[1] * segsize if newest[2] else (newest[1] + 1) * segsize


def lost_range(needed: int | None, waldir: list[str], segsize: int) -> dict | None:
    """The WAL capture needs but the primary no longer holds: from `needed` to its oldest segment."""
    held = [s[1] for s in (_segno(n, segsize) for n in waldir) if s and not s[2]]
    if needed is None or not held or min(held) * segsize <= needed:
        return None
    oldest = min(held) * segsize
    return {"from": format_lsn(needed), "to": format_lsn(oldest), "bytes": oldest - needed}


def ensure_slot(conn: psycopg.Connection, slot: str, archive: Path) -> str:
    """Create the capture slot when missing, reuse it when inactive.

    A missing slot is recreated only while the primary still holds the WAL the archive continues from: a new
    slot pins only new WAL, and recreating it after that WAL was removed would hide the loss. Where the role
    may not list pg_wal (pg_ls_waldir needs pg_monitor), the slot is created and the line says it was not checked.
    """
    if conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", [slot]).fetchone():
        return pg.ensure_slot(conn, slot)
    unchecked = ""
    try:
        segsize = int(pg.fetch_row(conn.execute("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"))[0])
        waldir = [r[0] for r in conn.execute("SELECT name FROM pg_ls_waldir()").fetchall()]
    except psycopg.errors.InsufficientPrivilege:
        unchecked = " (whether WAL before it was lost is not checked: GRANT pg_monitor to the connecting role)"
    else:
        lost = lost_range(restart_point(archive, segsize), waldir, segsize)
        if lost:
            raise FleetError(f"replication slot {slot} is missing and the primary no longer holds WAL "
                             f"{lost['from']} .. {lost['to']}: that WAL is lost and capture cannot continue from "
                             f"{archive}; see README 'Lost WAL' (move the archive aside, fleet up, a new base backup)")
    return pg.ensure_slot(conn, slot) + unchecked
