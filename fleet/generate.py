"""The seed's data generator: random rows into test_data on the primary, at a steady rate.

Rows go in small transactions, one per tick, so the WAL holds a steady stream
of commits (what the commit-time index and restores to a moment need). The
loop ends when the duration is over or when ``stop`` is set, which lets the
management command end on Ctrl-C and lets tests and chaos runs drive it from
another thread.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

import psycopg

from fleet import pg
from fleet.layout import Layout
from pitrsite.errors import FleetError, PitrError, first_line

TICK = 0.1  # seconds between transactions
PAYLOAD_BYTES = 32
INSERT_SQL = "INSERT INTO test_data (payload) VALUES (%s)"


@dataclass(frozen=True)
class GenerateResult:
    rows: int
    transactions: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"generated {self.rows} rows in {self.transactions} transactions over {self.seconds:.1f} s "
                f"({self.rate:.1f} rows/s)")


def check_args(rate: float, duration: float | None) -> None:
    if not rate > 0:
        raise PitrError(f"--rate must be above 0 rows per second, got {rate:g}")
    if duration is not None and not duration >= 0:
        raise PitrError(f"--duration must be 0 or more seconds, got {duration:g}")


def generate(rate: float = 100.0, duration: float | None = None, stop: threading.Event | None = None,
             port: int | None = None) -> GenerateResult:
    """Insert about ``rate`` rows per second until ``duration`` seconds pass or ``stop`` is set.

    ``duration`` None runs until ``stop`` is set.
    """
    check_args(rate, duration)
    stop = stop or threading.Event()
    port = port or Layout.port("primary")
    rows = transactions = 0
    began = time.monotonic()
    deadline = None if duration is None else began + duration
    try:
        with pg.connect(port, timeout=5) as conn:
            while not stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                # Catch up to where the rate says we should be; a slow commit is not lost rate.
                due = int(rate * (now - began)) + 1 - rows
                if due > 0:
                    payloads = [(secrets.token_hex(PAYLOAD_BYTES),) for _ in range(due)]
                    with conn.transaction(), conn.cursor() as cur:
                        cur.executemany(INSERT_SQL, payloads)
                    rows += due
                    transactions += 1
                wait = TICK if deadline is None else min(TICK, max(0.0, deadline - time.monotonic()))
                stop.wait(wait)
    except psycopg.Error as exc:
        raise FleetError(f"failure generating rows after {rows} rows ({first_line(exc)})") from None
    return GenerateResult(rows, transactions, round(time.monotonic() - began, 3))
