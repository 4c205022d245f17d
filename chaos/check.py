"""Checking one restored moment T against the log: what "exact" means, and the restore that makes the moment.

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

import time
from bisect import bisect_right
from datetime import datetime

from chaos.log import LIST_LIMIT, LoggedRow
from chaos.moments import Moment
from chaos.writers import iso
from fleet import pg
from fleet.driver import FleetDriver
from pitrsite.errors import PitrError
from pitrsite.jobs import JobReporter
from walcatalog import walnames


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
        literal = pg.fetch_row(conn.execute("select count(*) from test_data where created_at <= %s", [moment]))[0]
        run_count = pg.fetch_row(conn.execute(
            "SELECT count(*) FROM test_data WHERE created_at <= %s AND writer = ANY(%s)", [moment, writer_ids]))[0]
    with pg.connect(primary_port, timeout=10) as conn:
        foreign = pg.fetch_row(conn.execute(
            "SELECT count(*) FROM test_data WHERE (writer IS NULL OR NOT writer = ANY(%s)) AND created_at <= %s "
            "AND pg_xact_commit_timestamp(xmin) <= %s", [writer_ids, moment, moment]))[0]

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


def verify_moment(rows: list[LoggedRow], moment: Moment, writer_ids: list[int],
                  driver: FleetDriver, restore_to: datetime | None = None) -> dict:
    """Restore to ``restore_to`` (normally the moment itself) through the restore engine, then check at ``moment``.

    ``restore_to`` differing from the moment is how the tests prove the checks
    catch an inexact restore.
    """
    from pitrsite.jobs import JobState
    from restores.engine import run_restore
    from restores.service import queue_restore
    from restores.targets import RestoreTarget

    began = time.monotonic()
    result: dict = {**moment.as_json(), "restored_to": iso(restore_to or moment.at)}
    try:
        job = queue_restore(RestoreTarget.from_options(time=(restore_to or moment.at).isoformat()), trigger="chaos")
        result["restore_job"] = job.pk
        job = run_restore(job, JobReporter(job))
    except PitrError as exc:
        result.update(ok=False, checks={"restore": False}, error=str(exc), seconds=round(time.monotonic() - began, 2))
        return result
    result.update(restore_state=job.state, final_timeline=job.final_timeline,
                  stop_reason=job.plan.get("stop_reason", ""), restore_seconds=round(job.duration or 0, 2))
    if job.state != JobState.DONE:
        result.update(ok=False, checks={"restore": False}, error=job.error)
        return result
    result.update(check_moment(rows, moment.at, writer_ids, driver.layout.port("restore_target"),
                                      driver.layout.port("primary"), job.final_lsn))
    result["kind"] = moment.kind
    result["seconds"] = round(time.monotonic() - began, 2)
    return result


