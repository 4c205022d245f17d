"""Is the system back to normal after a chaos action? Checks against a goal LSN the primary had reached."""
from __future__ import annotations

import logging
import time
from typing import Callable

import psycopg
from django.db.models import Max

from chaos.writers import now_iso
from fleet import pg, services
from fleet.driver import FleetDriver
from pitrsite.errors import PitrError, first_line
from walcatalog import walnames

log = logging.getLogger(__name__)

# --- health ---------------------------------------------------------------------------------------
class Health:
    """Is the system back to normal? Every check compares with a goal LSN the primary had reached.

    - primary: answers a query;
    - capturer: pg_receivewal streaming through the slot and flushed past the goal;
    - standby: streaming and replayed past the goal;
    - catalog: indexed past the goal (the complete segments' ends and the
      partial's scanned position), with no gap after the run began;
    - indexer: worker and beat both running (when the run uses them).
    When worker and beat are not running, the run indexes the archive itself.
    """

    def __init__(self, driver: FleetDriver, since_lsn: int, use_services: bool):
        self.driver, self.since_lsn, self.use_services = driver, since_lsn, use_services

    def primary_lsn(self) -> int | None:
        return primary_lsn(self.driver.layout.port("primary"))

    def failures(self, goal: int) -> dict[str, str]:
        """What is not healthy yet (empty: healthy)."""
        failing: dict[str, str] = {}
        try:
            with pg.connect(self.driver.layout.port("primary"), dbname="postgres", timeout=2,
                            options="-c statement_timeout=2000") as conn:
                rows = conn.execute("SELECT application_name, state, flush_lsn::text, replay_lsn::text "
                                    "FROM pg_stat_replication").fetchall()
        except (PitrError, psycopg.Error) as exc:
            return {"primary": first_line(exc)}
        repl = {name: (state, flush, replay) for name, state, flush, replay in rows}
        if self.driver.state("capturer") != "running":
            failing["capturer"] = f"capturer is {self.driver.state('capturer')}"
        elif "pg_receivewal" not in repl or repl["pg_receivewal"][1] is None:
            failing["capturer"] = "pg_receivewal is not streaming"
        elif walnames.parse_lsn(repl["pg_receivewal"][1]) < goal:
            failing["capturer"] = f"flushed to {repl['pg_receivewal'][1]}, goal {walnames.format_lsn(goal)}"
        standby = repl.get("pitrsite_standby")
        if self.driver.state("standby") != "running":
            failing["standby"] = f"standby is {self.driver.state('standby')}"
        elif standby is None or standby[0] != "streaming" or standby[2] is None:
            failing["standby"] = f"standby replication is {standby[0] if standby else 'not connected'}"
        elif walnames.parse_lsn(standby[2]) < goal:
            failing["standby"] = f"replayed to {standby[2]}, goal {walnames.format_lsn(goal)}"
        if self.use_services:
            for name in ("worker", "beat"):
                state = services.status(name)["state"]
                if state != "running":
                    failing[name] = f"{name} is {state}"
        elif "capturer" not in failing:
            self.index_here()
        indexed = indexed_to()
        if indexed < goal:
            failing["catalog"] = f"indexed to {walnames.format_lsn(indexed)}, goal {walnames.format_lsn(goal)}"
        else:
            gap = self.gap()
            if gap:
                failing["catalog"] = f"gap: {gap}"
        return failing

    def index_here(self) -> None:
        from walcatalog.indexer import index_archive

        try:
            index_archive()
        except PitrError as exc:
            log.warning("chaos: index pass failed: %s", exc)

    def gap(self) -> str | None:
        from walcatalog.catalog import gaps

        found = [g for g in gaps() if g.end_lsn > self.since_lsn]
        return found[0].text if found else None

    def wait(self, goal: int, timeout: float, stop_early: Callable[[], bool] = lambda: False
             ) -> tuple[str | None, dict[str, str]]:
        """(recovered_at, failures): recovered_at is None when still unhealthy after ``timeout``."""
        deadline = time.monotonic() + timeout
        failing: dict[str, str] = {}
        while time.monotonic() < deadline and not stop_early():
            failing = self.failures(goal)
            if not failing:
                return now_iso(), {}
            time.sleep(0.5)
        return None, failing


def primary_lsn(port: int) -> int | None:
    """The primary's current WAL position, or None when it does not answer within 2 s."""
    try:
        with pg.connect(port, dbname="postgres", timeout=2, options="-c statement_timeout=2000") as conn:
            return walnames.parse_lsn(pg.fetch_row(conn.execute("SELECT pg_current_wal_lsn()::text"))[0])
    except (PitrError, psycopg.Error):
        return None


def wait_primary_lsn(port: int, timeout: float) -> tuple[int | None, int]:
    """(the primary's LSN or None after ``timeout``, attempts made).

    A refusing primary answers at once: back off (0.1 s doubling to 1 s) instead of spinning.
    """
    deadline, attempts, backoff = time.monotonic() + timeout, 0, 0.1
    while True:
        attempts += 1
        lsn = primary_lsn(port)
        left = deadline - time.monotonic()
        if lsn is not None or left <= 0:
            return lsn, attempts
        time.sleep(min(backoff, left))
        backoff = min(backoff * 2, 1.0)


def indexed_to() -> int:
    """How far the catalog has read the WAL: the end of the newest complete segment or the partial's scan."""
    from walcatalog.models import WalSegment

    complete = WalSegment.objects.filter(is_partial=False).aggregate(m=Max("end_lsn"))["m"] or 0
    partial = WalSegment.objects.filter(is_partial=True).aggregate(m=Max("scanned_to"))["m"] or 0
    return max(complete, partial)

