"""Proof that a promoted restore reached what its plan asked for, from the server's own records.

The new timeline's history file says where recovery ended; the server log (its own processes' lines, not
client sessions') says why.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from restores.models import TargetKind
from restores.planner import Plan
from walcatalog import walnames


def end_of_recovery(pg_wal: Path) -> tuple[int | None, str, int | None]:
    """The switch point PostgreSQL wrote into the new timeline's history file at promotion."""
    histories = sorted(pg_wal.glob("*.history"))
    if not histories:
        return None, "", None
    newest = histories[-1]
    entries = walnames.parse_history(newest.read_text())
    last = entries[-1]
    return last.switch_lsn, last.reason, int(newest.name.split(".")[0], 16)


def recovery_shortfall(the_plan: Plan, end_lsn: int | None, log: "ServerLog") -> str | None:
    """Why recovery did not reach what the plan asked for, or None when it did.

    A target (time, xid, LSN, name, immediate) must have been the reason replay stopped: PostgreSQL logs
    "recovery stopping ..." for that. The latest WAL has no target to stop at, so replay must have reached
    the end of the WAL that was staged: the partial's captured end, or past the last segment's last commit.
    """
    if end_lsn is None:
        return "the promoted server wrote no timeline history: where recovery ended is unknown"
    if the_plan.target.kind != TargetKind.LATEST:
        if log.stopped is None:
            return f"recovery ended at {walnames.format_lsn(end_lsn)} without reaching its target ({log.reason()})"
        return None
    expected, what = latest_end(the_plan)
    if end_lsn < expected:
        return (f"recovery ended at {walnames.format_lsn(end_lsn)}, before {walnames.format_lsn(expected)} "
                f"({what}): {log.reason()}")
    return None


def latest_end(the_plan: Plan) -> tuple[int, str]:
    """The least LSN a restore to the latest WAL must reach, and what it is, for messages."""
    if not the_plan.segments:
        assert the_plan.backup.stop_lsn is not None  # the plan's backup is verified: it has its LSNs
        return the_plan.backup.stop_lsn, "the end of the backup"
    last = the_plan.segments[-1]
    if last.is_partial:
        where = f"its storage snapshot {the_plan.snapshot.key}" if the_plan.snapshot else last.file_name
        end = the_plan.partial_end
        assert end is not None  # the plan's last segment is partial
        return end, f"the end of the WAL captured in {where}"
    if last.last_commit_lsn is not None:
        return last.last_commit_lsn + 1, f"the last commit in {last.name}"
    return last.start_lsn, f"the start of {last.name}"


# The startup process's complaints when it meets WAL it cannot read (xlogreader.c): replay ends there.
WAL_COMPLAINT = re.compile(r"^(invalid|incorrect|unexpected|record with|missing contrecord|there is no contrecord|"
                           r"could not (read|open|find)|requested WAL segment)")
# "%m [%p] %q%u@%d " (fleet/provision.py): session lines carry user@db, the startup process's lines do not.
LOG_LINE = re.compile(r"^\S+ \S+ \S+ \[\d+\] (?P<session>\S*@\S* )?(?P<level>[A-Z]+):\s+(?P<text>.*)$")


@dataclass
class ServerLog:
    """What the server's own processes (not client sessions) logged since the restore started it."""

    fatal: str | None = None  # the first FATAL or PANIC of the server itself
    complaint: str | None = None  # the last line where reading WAL failed
    stopped: str | None = None  # "recovery stopping ...": a recovery target was reached
    last: str | None = None  # the last line of all

    @classmethod
    def read(cls, path: Path, offset: int) -> "ServerLog":
        found = cls()
        if not path.exists():
            return found
        with open(path, "rb") as fh:
            fh.seek(offset)
            lines = fh.read().decode(errors="replace").splitlines()
        for line in lines:
            match = LOG_LINE.match(line)
            if not match or match["session"]:
                continue  # a client's line: "the database system is starting up" is our own probe's
            text, level = match["text"].strip(), match["level"]
            found.last = text
            if level in ("FATAL", "PANIC") and found.fatal is None:
                found.fatal = text
            elif WAL_COMPLAINT.match(text):
                found.complaint = text
            elif text.startswith("recovery stopping"):
                found.stopped = text
        return found

    def reason(self) -> str:
        parts = [p for p in (self.fatal, self.complaint) if p]
        return "; ".join(parts) or self.last or "the server log says nothing more"
