"""The verification log: the writers' JSON lines resolved on the primary, with commit LSNs, saved as JSON Lines.

verification_log.jsonl holds the header object on its first line and one committed row per line after it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from chaos.writers import application_name, iso, read_jsonl
from fleet import pg
from pitrsite.errors import StepFailed
from walcatalog import walnames, waldump

LIST_LIMIT = 50  # ids listed per moment; the counts are always complete


@dataclass
class LoggedRow:
    id: int
    writer: int
    seq: int
    xid: int
    created_at: datetime
    committed_at: datetime
    how: str  # direct, retry, lookup (during the run) or resolved (after it)
    lsn_after: int | None = None
    commit_lsn: int | None = None  # start of the commit record, from pg_waldump

    def as_json(self) -> dict:
        data = asdict(self)
        data.update(created_at=iso(self.created_at), committed_at=iso(self.committed_at),
                    lsn_after=walnames.format_lsn(self.lsn_after) if self.lsn_after is not None else None,
                    commit_lsn=walnames.format_lsn(self.commit_lsn) if self.commit_lsn is not None else None)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "LoggedRow":
        lsn = lambda v: walnames.parse_lsn(v) if v else None  # noqa: E731
        return cls(id=data["id"], writer=data["writer"], seq=data["seq"], xid=data["xid"],
                   created_at=datetime.fromisoformat(data["created_at"]),
                   committed_at=datetime.fromisoformat(data["committed_at"]), how=data["how"],
                   lsn_after=lsn(data.get("lsn_after")), commit_lsn=lsn(data.get("commit_lsn")))


# --- building the log ---------------------------------------------------------------------
def collect(run_dir: Path, writer_ids: list[int], port: int, run_tag: str,
            wait_idle: float = 30.0) -> tuple[list[LoggedRow], dict]:
    """The writers' JSON lines, with every unknown outcome and pending commit time resolved on the primary.

    Returns the committed rows and a report of the resolution and of the
    log's integrity (it must hold exactly the run's rows the primary holds).
    """
    # This run's writers' files only: a run directory can hold an older run's files when a database reset
    # gave the new run an old id (writer ids never repeat, run ids can).
    paths = [run_dir / f"writes-{writer}.jsonl" for writer in writer_ids]
    entries = [e for path in paths if path.exists() for e in read_jsonl(path)]
    committed = {(e["writer"], e["seq"]): e for e in entries if e["status"] != "unknown"}
    unknown = {(e["writer"], e["seq"]) for e in entries if e["status"] == "unknown"} - set(committed)
    report: dict[str, Any] = {"unknown_attempts": sum(1 for e in entries if e["status"] == "unknown"),
              "unknown_at_end": len(unknown), "resolved_committed": 0, "resolved_not_committed": 0,
              "commit_time_pending": sum(1 for e in committed.values() if e["status"] != "committed")}
    with pg.connect(port, timeout=10) as conn:
        _wait_no_writer_backends(conn, run_tag, wait_idle)
        primary = {(w, s): (rid, xid, created, committed_at) for rid, w, s, xid, created, committed_at in conn.execute(
            "SELECT id, writer, seq, xmin::text::bigint, created_at, pg_xact_commit_timestamp(xmin) "
            "FROM test_data WHERE writer = ANY(%s)", [writer_ids]).fetchall()}
    rows: list[LoggedRow] = []
    for key in unknown:
        if key in primary:
            report["resolved_committed"] += 1
            rid, xid, created, committed_at = primary[key]
            committed[key] = {"writer": key[0], "seq": key[1], "id": rid, "xid": xid, "created_at": iso(created),
                              "committed_at": iso(committed_at), "status": "committed", "how": "resolved"}
        else:
            report["resolved_not_committed"] += 1
    problems = []
    for key, e in sorted(committed.items()):
        if key not in primary:
            problems.append(f"writer {key[0]} seq {key[1]} (id {e['id']}) "
                            f"is logged as committed but not on the primary")
            continue
        rid, xid, created, committed_at = primary[key]
        if e["id"] != rid or e["xid"] != xid:
            problems.append(f"writer {key[0]} seq {key[1]}: logged id {e['id']} xid {e['xid']}, primary has "
                            f"id {rid} xid {xid}")
        if e.get("committed_at") is None:
            e["committed_at"] = iso(committed_at)  # committed for sure; its time read now
        elif datetime.fromisoformat(e["committed_at"]) != committed_at:
            problems.append(f"writer {key[0]} seq {key[1]}: logged commit time {e['committed_at']}, primary says "
                            f"{iso(committed_at)}")
        rows.append(LoggedRow(id=rid, writer=key[0], seq=key[1], xid=xid, created_at=created,
                              committed_at=committed_at, how=e["how"],
                              lsn_after=walnames.parse_lsn(e["lsn_after"]) if e.get("lsn_after") else None))
    unlogged = sorted(set(primary) - set(committed))
    for key in unlogged[:LIST_LIMIT]:
        problems.append(f"writer {key[0]} seq {key[1]} (id {primary[key][0]}) is on the primary but not in the log")
    report.update(rows=len(rows), integrity_ok=not problems and not unlogged, problems=problems[:LIST_LIMIT],
                  problem_count=len(problems) + max(0, len(unlogged) - LIST_LIMIT))
    rows.sort(key=lambda r: (r.committed_at, r.writer, r.seq))
    return rows, report


def _wait_no_writer_backends(conn: psycopg.Connection, run_tag: str, timeout: float) -> None:
    """A backend whose client gave up may still be finishing its commit: wait until none is left.

    The writers have stopped, so a backend still there after half the time (a connection left half-open
    by a pause) is terminated: its transaction then either committed already or never will, and the
    primary's rows read next are final.
    """
    deadline = time.monotonic() + timeout
    terminate_at = time.monotonic() + timeout / 2
    pattern = application_name(run_tag, "%")
    while time.monotonic() < deadline:
        busy = pg.fetch_row(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s "
                            "AND pid <> pg_backend_pid()", [pattern]))[0]
        if not busy:
            return
        if time.monotonic() >= terminate_at:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s "
                         "AND pid <> pg_backend_pid()", [pattern])
        time.sleep(0.2)
    raise StepFailed("resolving unknown writes", f"backends of this run still busy after {timeout:.0f} s")


def attach_commit_lsns(rows: list[LoggedRow], archive: Path, timeline: int, segment_size: int,
                       start_lsn: int, end_lsn: int) -> dict:
    """Each row's commit-record LSN, read with pg_waldump from the captured WAL (not from the catalog)."""
    wanted = {r.xid: r for r in rows}
    first = walnames.segment_of_lsn(start_lsn, segment_size)
    last = walnames.segment_of_lsn(max(start_lsn, end_lsn - 1), segment_size)
    read = 0
    for segno in range(first, last + 1):
        path = _segment_file(archive, timeline, segno, segment_size)
        if path is None:
            continue  # reported below as commits not found
        successor = _segment_file(archive, timeline, segno + 1, segment_size)
        result = waldump.read_commits(path, timeline, segno, segment_size,
                                      start=start_lsn if segno == first else None, successor=successor)
        read += 1
        for commit in result.commits:
            row = wanted.get(commit.xid)
            if row is not None:
                row.commit_lsn = commit.lsn
    missing = [r for r in rows if r.commit_lsn is None]
    return {"segments_read": read, "commits_found": len(rows) - len(missing), "commits_not_found": len(missing),
            "not_found_ids": [r.id for r in missing[:LIST_LIMIT]]}


def _segment_file(archive: Path, timeline: int, segno: int, segment_size: int) -> Path | None:
    name = walnames.segment_name(timeline, segno, segment_size)
    for candidate in (archive / name, archive / f"{name}.partial"):
        if candidate.exists():
            return candidate
    return None


def save_log(path: Path, header: dict, rows: list[LoggedRow]) -> None:
    """JSON Lines: the header object first, then one row per line (written whole, then renamed)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(header, default=str, separators=(",", ":")) + "\n")
        for row in rows:
            fh.write(json.dumps(row.as_json(), separators=(",", ":")) + "\n")
    tmp.replace(path)


def load_log(path: Path) -> tuple[dict, list[LoggedRow]]:
    with open(path) as fh:
        header = json.loads(fh.readline())
        rows = [LoggedRow.from_json(json.loads(line)) for line in fh if line.strip()]
    return header, rows
