"""Where capture continues from, and what WAL is lost when the primary no longer holds it.

Names only (fleet sits below walcatalog, whose walnames module is the full parser): enough to find where
pg_receivewal restarts in its archive and whether the primary still has that WAL.
"""
from __future__ import annotations

import re
from pathlib import Path

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
