"""The chaos run's writers: concurrent clients that log every commit they are sure of.

Each writer is a thread with its own psycopg connection. It inserts one row
per transaction (autocommit) into ``test_data`` with its writer id and the
next sequence number, at random intervals with a random payload. Once the
INSERT has returned, the row is committed: the writer then asks the primary
for the transaction's exact commit time (``pg_xact_commit_timestamp``) and
``pg_current_wal_lsn()`` and appends the row to its own JSON-lines file.

A write whose outcome is unknown (the connection died or the statement hung
past the client-side deadline, e.g. while the primary is paused) is logged as
``unknown`` and retried with the same (writer, seq) after reconnecting with
backoff. UNIQUE (writer, seq) makes the retry safe: either it commits (the
first attempt did not), or it fails with a unique violation (the first attempt
did commit, and the row is looked up). A write still unknown when the run
stops is resolved afterwards by looking (writer, seq) up on the primary.
Nothing is logged as committed that the primary does not hold.

A paused server keeps its TCP socket open (the kernel still answers), so
keepalives and libpq timeouts never fire on a hung query; a watchdog thread
shuts the socket down when a statement passes its deadline, which makes the
blocked call fail at once.
"""
from __future__ import annotations

import json
import os
import random
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from fleet import pg
from pitrsite.errors import first_line

INSERT_SQL = ("INSERT INTO test_data (payload, writer, seq) VALUES (%s, %s, %s) "
              "RETURNING id, xmin::text::bigint, created_at")
COMMIT_INFO_SQL = "SELECT pg_xact_commit_timestamp(%s::text::xid), pg_current_wal_lsn()::text"
LOOKUP_SQL = ("SELECT id, xmin::text::bigint, created_at, pg_xact_commit_timestamp(xmin) "
              "FROM test_data WHERE writer = %s AND seq = %s")


def iso(moment: datetime | None) -> str | None:
    return moment.astimezone(timezone.utc).isoformat() if moment else None


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


class Watchdog(threading.Thread):
    """Fails statements that pass their deadline by shutting their socket down."""

    def __init__(self):
        super().__init__(name="chaos-watchdog", daemon=True)
        self._armed: dict[int, tuple[float, psycopg.Connection]] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.fired = 0

    def arm(self, key: int, conn: psycopg.Connection, seconds: float) -> None:
        with self._lock:
            self._armed[key] = (time.monotonic() + seconds, conn)

    def disarm(self, key: int) -> None:
        with self._lock:
            self._armed.pop(key, None)

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.wait(0.1):
            now = time.monotonic()
            with self._lock:
                due = [(key, conn) for key, (deadline, conn) in self._armed.items() if deadline <= now]
                for key, _ in due:
                    del self._armed[key]
                for _, conn in due:
                    self.fired += 1
                    shutdown_socket(conn)


def shutdown_socket(conn: psycopg.Connection) -> None:
    try:
        fd = conn.pgconn.socket
    except (psycopg.Error, AttributeError):
        return
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


@dataclass
class WriterStats:
    committed: int = 0
    unknown: int = 0  # attempts whose outcome was unknown when they failed
    resolved_by_retry: int = 0  # ... and the retry committed (the first attempt did not)
    resolved_by_lookup: int = 0  # ... and the first attempt had committed
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, for the report

    def note(self, message: str) -> None:
        if len(self.errors) < 10:
            self.errors.append(message)


class Writer(threading.Thread):
    """One concurrent client. Its log file is its own: no lock shared with other writers."""

    def __init__(self, writer_id: int, run_tag: str, log_path: Path, port: int, stop: threading.Event,
                 watchdog: Watchdog, mean_pause: float, statement_timeout: float, rng: random.Random,
                 per_second: dict[int, int] | None = None):
        super().__init__(name=f"chaos-writer-{writer_id}", daemon=True)
        self.writer_id, self.run_tag, self.log_path, self.port = writer_id, run_tag, log_path, port
        self.stop_event, self.watchdog, self.mean_pause = stop, watchdog, mean_pause
        self.timeout, self.rng = statement_timeout, rng
        self.stats = WriterStats()
        self.seq = 1
        self.conn: psycopg.Connection | None = None
        self.fatal: str | None = None
        # Commits per unix second, shared by the writers, for a live plot (the final one comes from the log).
        self.per_second = per_second if per_second is not None else {}

    # --- the loop ------------------------------------------------------------------
    def run(self) -> None:
        with open(self.log_path, "a", buffering=1) as self.log_file:
            try:
                self.loop()
            except Exception as exc:  # noqa: BLE001 - a writer that dies must say why in the report
                self.fatal = f"{type(exc).__name__}: {first_line(exc)}"
            finally:
                self.close()

    def loop(self) -> None:
        pending_unknown = False  # the current seq has an attempt of unknown outcome
        while not self.stop_event.is_set():
            # Random intervals, exponential around the mean: bursts and lulls both happen.
            self.stop_event.wait(self.rng.expovariate(1.0 / self.mean_pause) if self.mean_pause > 0 else 0)
            if self.stop_event.is_set():
                break
            if not self.ensure_connected():
                continue
            outcome = self.attempt(retry=pending_unknown)
            if outcome == "unknown":
                pending_unknown = True
                continue
            pending_unknown = False
            self.seq += 1

    def ensure_connected(self) -> bool:
        if self.conn is not None and not self.conn.closed:
            return True
        backoff = 0.2
        while not self.stop_event.is_set():
            try:
                self.conn = pg.connect(self.port, timeout=2, application_name=application_name(self.run_tag,
                                                                                                self.writer_id),
                                       keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=2,
                                       options=f"-c statement_timeout={int(self.timeout * 1000)}")
                return True
            except Exception as exc:  # noqa: BLE001 - FleetError or OSError while the primary is away
                self.stats.note(f"{now_iso()} connect: {first_line(exc)}")
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 2.0)
        return False

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self.conn = None

    def execute(self, sql: str, params: list) -> Any:  # the row; None when the lookup finds none
        assert self.conn is not None
        self.watchdog.arm(self.writer_id, self.conn, self.timeout)
        try:
            return self.conn.execute(sql, params).fetchone()
        finally:
            self.watchdog.disarm(self.writer_id)

    def attempt(self, retry: bool) -> str:
        """One INSERT of (writer, seq); 'committed' or 'unknown'."""
        payload = f"{self.run_tag}:{secrets.token_hex(self.rng.randint(4, 48))}"
        sent_at = now_iso()
        try:
            row_id, xid, created_at = self.execute(INSERT_SQL, [payload, self.writer_id, self.seq])
        except pg_errors.UniqueViolation:
            if not retry:
                raise  # another client writes under our writer id: the log could not be trusted
            # The attempt we could not hear back from did commit.
            return self.resolved_by_lookup()
        except (psycopg.Error, OSError) as exc:
            self.lost(exc, "insert", sent_at)
            return "unknown"
        # The INSERT returned in autocommit mode: the transaction is committed.
        if retry:
            self.stats.resolved_by_retry += 1
        entry = {"writer": self.writer_id, "seq": self.seq, "id": row_id, "xid": xid, "created_at": iso(created_at),
                 "status": "committed", "how": "retry" if retry else "direct"}
        try:
            committed_at, lsn_after = self.execute(COMMIT_INFO_SQL, [str(xid)])
            entry.update(committed_at=iso(committed_at), lsn_after=lsn_after)
        except (psycopg.Error, OSError) as exc:
            # Committed for sure; only its commit time is still to be read (after the run).
            entry.update(committed_at=None, lsn_after=None, status="committed_time_pending")
            self.lost(exc, "commit time", sent_at, log_unknown=False)
        self.record(entry)
        return "committed"

    def resolved_by_lookup(self) -> str:
        try:
            row = self.execute(LOOKUP_SQL, [self.writer_id, self.seq])
        except (psycopg.Error, OSError) as exc:
            self.lost(exc, "lookup", now_iso(), log_unknown=False)
            return "unknown"
        row_id, xid, created_at, committed_at = row
        self.stats.resolved_by_lookup += 1
        self.record({"writer": self.writer_id, "seq": self.seq, "id": row_id, "xid": xid,
                     "created_at": iso(created_at), "committed_at": iso(committed_at), "lsn_after": None,
                     "status": "committed", "how": "lookup"})
        return "committed"

    def lost(self, exc: BaseException, what: str, sent_at: str, log_unknown: bool = True) -> None:
        """The connection is unusable: note it, drop it; the next attempt reconnects."""
        message = first_line(exc)
        self.stats.note(f"{now_iso()} {what}: {message}")
        if log_unknown:
            self.stats.unknown += 1
            self.record({"writer": self.writer_id, "seq": self.seq, "status": "unknown", "sent_at": sent_at,
                         "failed_at": now_iso(), "error": message})
        self.stats.reconnects += 1
        self.close()

    def record(self, entry: dict) -> None:
        if entry["status"] != "unknown":
            self.stats.committed += 1
            second = int(time.time())
            self.per_second[second] = self.per_second.get(second, 0) + 1
        self.log_file.write(json.dumps(entry, separators=(",", ":")) + "\n")


def application_name(run_tag: str, writer_id: int | str) -> str:
    """How a writer's connections show in pg_stat_activity (a LIKE pattern when writer_id is '%')."""
    return f"pitr-{run_tag}-w{writer_id}"


def read_jsonl(path: Path) -> list[dict]:
    entries = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    entries.append(json.loads(line))
                except ValueError:
                    continue  # a torn last line of a killed run
    return entries
