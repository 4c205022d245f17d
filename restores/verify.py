"""The chaos run's proof: the writers' log, resolved and checked, against restores to logged moments.

What "exact" means here (the checks of one moment T):

- ids: the ids of this run's rows on the restored server equal the logged rows
  with commit time <= T (missing and extra ids are named, not only counted);
- prefixes: every writer's restored sequence numbers are 1..n with no hole
  (a hole would mean a later commit was replayed and an earlier one was not);
- end of recovery: the LSN where the restored server's new timeline branched
  (RestoreJob.final_lsn) lies after the commit record of the last logged commit
  <= T and no later than the commit record of the first logged commit after T;
- the seed's condition, literally: ``select count(*) from test_data where
  created_at <= T`` on the restored server equals the log's count.

Semantics of the columns. ``created_at`` is ``now()`` of the inserting
transaction (its start; one statement per transaction here), so it is never
later than the commit time: every row committed at or before T has
``created_at <= T``, and a row committed after T is not on a server restored
to T. The seed's query therefore counts exactly the rows committed at or before
T. The commit time is ``pg_xact_commit_timestamp(xmin)``: the time PostgreSQL
writes into the commit record, the one ``recovery_target_time`` compares with.

Which rows count. Only this run's rows (``writer`` among the run's writer ids,
chosen unused on the primary) are compared id by id. The seed's count query
is run as written, over the whole table; its expected value is the log's count
plus the rows other clients committed at or before T with ``created_at <= T``,
counted on the primary with ``pg_xact_commit_timestamp``.

Which moments. PostgreSQL stops replay at the first commit record *in WAL
order* whose time is after T. Two concurrent commits can take their
timestamps in one order and insert their commit records in the other (the
time is taken just before the record is inserted); at a T between those two
timestamps no restore can give "exactly the rows with commit time <= T".
Moments are therefore drawn from the log where commit-time order and WAL
order agree (the exact commit-record LSNs come from pg_waldump over the
captured WAL); how many candidates were set aside for this is reported.
"""
from __future__ import annotations

import json
import random
import time
from bisect import bisect_right
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg

from fleet import pg
from pitrsite.errors import PitrError
from restores.chaos_writers import application_name, iso, read_jsonl
from walcatalog import walnames, waldump

LIST_LIMIT = 50  # ids listed per moment; the counts are always complete


class VerifyError(PitrError):
    pass


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


@dataclass
class Moment:
    at: datetime
    kind: str  # "at a commit" or "between commits"

    def as_json(self) -> dict:
        return {"at": iso(self.at), "kind": self.kind}


# --- building the log ---------------------------------------------------------------------
def collect(run_dir: Path, writer_ids: list[int], port: int, run_tag: str,
            wait_idle: float = 30.0) -> tuple[list[LoggedRow], dict]:
    """The writers' JSON lines, with every unknown outcome and pending commit time resolved on the primary.

    Returns the committed rows and a report of the resolution and of the
    log's integrity (it must hold exactly the run's rows the primary holds).
    """
    entries = [e for path in sorted(run_dir.glob("writes-*.jsonl")) for e in read_jsonl(path)]
    committed = {(e["writer"], e["seq"]): e for e in entries if e["status"] != "unknown"}
    unknown = {(e["writer"], e["seq"]) for e in entries if e["status"] == "unknown"} - set(committed)
    report = {"unknown_attempts": sum(1 for e in entries if e["status"] == "unknown"),
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
            problems.append(f"writer {key[0]} seq {key[1]} (id {e['id']}) is logged as committed but not on the primary")
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
    """A backend whose client gave up may still be finishing its commit: wait until none is left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s "
                            "AND pid <> pg_backend_pid()", [application_name(run_tag, "%")]).fetchone()[0]
        if not busy:
            return
        time.sleep(0.2)
    raise VerifyError(f"failure resolving unknown writes (backends of this run still busy after {timeout:.0f} s)")


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
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(header, default=str, indent=1)[:-2])  # reopen the header object
        fh.write(',\n "rows": [\n')
        for i, row in enumerate(rows):
            fh.write(("  " if i == 0 else ", ") + json.dumps(row.as_json(), separators=(",", ":")) + "\n")
        fh.write(" ]\n}\n")
    tmp.replace(path)


def load_log(path: Path) -> tuple[dict, list[LoggedRow]]:
    data = json.loads(path.read_text())
    rows = [LoggedRow.from_json(r) for r in data.pop("rows")]
    return data, rows


# --- choosing moments ------------------------------------------------------------------------
def pick_moments(rows: list[LoggedRow], count: int, after: datetime, until: datetime,
                 rng: random.Random) -> tuple[list[Moment], dict]:
    """``count`` moments in (after, until]: half at a commit's exact time, half between two commits.

    Only moments where commit-time order and WAL order agree (see the module
    docstring); rows must be sorted by commit time and carry commit LSNs.
    """
    n = len(rows)
    lsns = [r.commit_lsn if r.commit_lsn is not None else (r.lsn_after or 0) for r in rows]
    prefix_max, suffix_min = [0] * n, [0] * (n + 1)
    running = -1
    for i, lsn in enumerate(lsns):
        running = max(running, lsn)
        prefix_max[i] = running
    suffix_min[n] = 1 << 64
    for i in range(n - 1, -1, -1):
        suffix_min[i] = min(suffix_min[i + 1], lsns[i])
    at_commit, between, reordered = [], [], 0
    for i in range(n):
        if i + 1 < n and rows[i + 1].committed_at == rows[i].committed_at:
            continue  # the last of equal times stands for them all
        t = rows[i].committed_at
        if not (after < t <= until):
            continue
        if prefix_max[i] >= suffix_min[i + 1]:
            reordered += 1
            continue
        at_commit.append(Moment(t, "at a commit"))
        if i + 1 < n and rows[i + 1].committed_at - t >= timedelta(microseconds=2) and rows[i + 1].committed_at <= until:
            mid = t + (rows[i + 1].committed_at - t) / 2
            between.append(Moment(mid, "between commits"))
    want_between = min(len(between), count // 2)
    chosen = rng.sample(between, want_between) + rng.sample(at_commit, min(len(at_commit), count - want_between))
    if len(chosen) < count:  # top up from whichever kind has more
        rest = [m for m in between if m not in chosen]
        chosen += rng.sample(rest, min(len(rest), count - len(chosen)))
    chosen.sort(key=lambda m: m.at)
    return chosen, {"candidates_at_commit": len(at_commit), "candidates_between": len(between),
                    "set_aside_reordered": reordered}


# --- checking one restored moment ----------------------------------------------------------------
def expected_at(rows: list[LoggedRow], moment: datetime) -> list[LoggedRow]:
    times = [r.committed_at for r in rows]
    return rows[:bisect_right(times, moment)]


def check_moment(rows: list[LoggedRow], moment: datetime, writer_ids: list[int], restore_port: int,
                 primary_port: int, final_lsn: int | None) -> dict:
    """Compare the restored server with the log at ``moment``; every check is reported, not just the first."""
    expected = expected_at(rows, moment)
    later = rows[len(expected):]
    expected_map = {r.id: (r.writer, r.seq) for r in expected}
    with pg.connect(restore_port, timeout=10) as conn:
        restored = {rid: (w, s) for rid, w, s in conn.execute(
            "SELECT id, writer, seq FROM test_data WHERE writer = ANY(%s)", [writer_ids]).fetchall()}
        literal = conn.execute("select count(*) from test_data where created_at <= %s", [moment]).fetchone()[0]
        run_count = conn.execute("SELECT count(*) FROM test_data WHERE created_at <= %s AND writer = ANY(%s)",
                                 [moment, writer_ids]).fetchone()[0]
    with pg.connect(primary_port, timeout=10) as conn:
        foreign = conn.execute(
            "SELECT count(*) FROM test_data WHERE (writer IS NULL OR NOT writer = ANY(%s)) AND created_at <= %s "
            "AND pg_xact_commit_timestamp(xmin) <= %s", [writer_ids, moment, moment]).fetchone()[0]

    missing = sorted(set(expected_map) - set(restored))
    extra = sorted(set(restored) - set(expected_map))
    mismatched = sorted(i for i in set(restored) & set(expected_map) if restored[i] != expected_map[i])
    gaps = _prefix_gaps(restored.values(), writer_ids)

    last_le = max((r.commit_lsn for r in expected if r.commit_lsn is not None), default=None)
    first_gt = min((r.commit_lsn for r in later if r.commit_lsn is not None), default=None)
    lsn_ok = final_lsn is not None and (last_le is None or final_lsn > last_le) and \
        (first_gt is None or final_lsn <= first_gt)
    logged_count = sum(1 for r in expected if r.created_at <= moment)
    checks = {
        "ids": not missing and not extra and not mismatched,
        "prefixes": not gaps,
        "end_lsn": lsn_ok,
        "count": literal == logged_count + foreign and run_count == logged_count,
    }
    fmt = lambda v: walnames.format_lsn(v) if v is not None else None  # noqa: E731
    return {
        "moment": iso(moment), "ok": all(checks.values()), "checks": checks,
        "expected_rows": len(expected), "restored_rows": len(restored),
        "missing_count": len(missing), "missing_ids": missing[:LIST_LIMIT],
        "extra_count": len(extra), "extra_ids": extra[:LIST_LIMIT],
        "mismatched_ids": mismatched[:LIST_LIMIT], "prefix_gaps": gaps,
        "end_lsn": {"final": fmt(final_lsn), "after_commit_at": fmt(last_le), "at_or_before_commit_at": fmt(first_gt)},
        "count": {"sql": "select count(*) from test_data where created_at <= T", "restored": literal,
                  "expected": logged_count + foreign, "from_log": logged_count, "other_clients": foreign,
                  "run_rows_restored": run_count},
    }


def _prefix_gaps(pairs, writer_ids: list[int]) -> dict[str, str]:
    """Per writer, what breaks 'restored seqs are exactly 1..n' (empty when all are prefixes)."""
    seqs: dict[int, list[int]] = {w: [] for w in writer_ids}
    for writer, seq in pairs:
        seqs.setdefault(writer, []).append(seq)
    gaps = {}
    for writer, values in seqs.items():
        values.sort()
        for expected, seq in enumerate(values, 1):
            if seq != expected:
                gaps[str(writer)] = f"seq {expected} missing while seq {seq} is present" if seq > expected \
                    else f"seq {seq} appears twice"
                break
    return gaps
