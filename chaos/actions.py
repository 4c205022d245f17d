"""Chaos actions: what each one does to the fleet, and how the run waits until the system has recovered.

Which process the indexer kill hits. The catalog indexer runs as a Celery
task in the worker, scheduled by beat, both under fleet.supervise. When the
chaos run is itself a Celery task it lives inside the worker, so killing the
worker would kill the run: the action then kills beat (the process that makes
the indexer run; the catalog stops advancing until beat is back). Run from a
command (`manage.py chaos`, the demo, the tests) it kills the worker, which
executes the index passes. Either way the supervisor restarts the process,
and recovery means the catalog has indexed past the primary's position taken
once the new process is up.
"""
from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from chaos.damage import Damage, restore_latest_caught, rot_segment, stray_history
from chaos.health import wait_primary_lsn
from chaos.params import ACTION_HELP, ChaosError
from chaos.writers import now_iso
from fleet import pg, services
from pitrsite import procs
from pitrsite.errors import PitrError
from walcatalog import walnames

if TYPE_CHECKING:
    import random

    from chaos.health import Health
    from chaos.models import ChaosRun
    from chaos.params import ChaosParams
    from fleet.driver import FleetDriver
    from pitrsite.jobs import Reporter


def indexer_target() -> tuple[str, int] | None:
    """(service, pid) the indexer_kill action hits, or None when worker and beat are not both supervised and up."""
    worker, beat = services.status("worker"), services.status("beat")
    if worker["state"] != "running" or beat["state"] != "running":
        return None
    if _inside(worker["pid"]):
        return "beat", beat["pid"]  # the run lives in the worker: never kill ourselves
    return "worker", worker["pid"]


def _inside(pid: int | None) -> bool:
    """Is this process pid or one of its descendants?"""
    return procs.descends_from(os.getpid(), pid)


def restarted(name: str, old_pid: int) -> dict | None:
    """The service's status once its supervisor runs a new process in place of old_pid."""
    status = services.status(name)
    return status if status["state"] == "running" and status["pid"] != old_pid else None

class Actions:
    """The chaos actions of a run (mixed into chaos.run.Chaos: needs driver, params, rng, health, events)."""

    if TYPE_CHECKING:  # provided by chaos.run.Chaos
        driver: FleetDriver
        params: ChaosParams
        rng: random.Random
        health: Health
        events: list[dict]
        run_row: ChaosRun
        reporter: Reporter
        dir: Path

        def committed_so_far(self) -> int: ...

        def update(self, **fields) -> None: ...

    def inject(self, action: str) -> None:
        event: dict = {"action": action, "description": ACTION_HELP[action], "started_at": now_iso(),
                       "commits_before": self.committed_so_far()}
        try:
            getattr(self, f"do_{action}")(event)
        except PitrError as exc:
            event["error"] = str(exc)
        event["ended_at"] = now_iso()
        self.heal()  # whatever happened, nothing stays paused
        recovered_at, failing = self.recover(action, event)
        event.update(recovered_at=recovered_at, ok=recovered_at is not None and "error" not in event,
                     not_recovered=failing, commits_after=self.committed_so_far())
        if recovered_at:
            event["recovery_seconds"] = round((datetime.fromisoformat(recovered_at) -
                                               datetime.fromisoformat(event["ended_at"])).total_seconds(), 3)
        self.events.append(event)
        self.update(events=self.events, writes_count=self.committed_so_far())
        what = f"recovered in {event['recovery_seconds']:.1f} s" if event["ok"] else \
            f"NOT recovered: {event.get('error') or '; '.join(f'{k}: {v}' for k, v in failing.items())}"
        self.reporter.log(f"{action} ({event.get('target', '')}): {what}")

    def recover(self, action: str, event: dict) -> tuple[str | None, dict]:
        timeout = self.params.recovery_timeout
        began = time.monotonic()
        if action == "indexer_kill" and "error" not in event:
            name, old = event["target"], event["pid"]
            while time.monotonic() - began < timeout and not restarted(name, old):
                time.sleep(0.2)
            status = restarted(name, old)
            if status is None:
                return None, {name: f"not restarted by its supervisor within {timeout:.0f} s"}
            event.update(new_pid=status["pid"], restarted_at=now_iso())
        goal, _ = wait_primary_lsn(self.driver.layout.port("primary"), max(1.0, timeout - (time.monotonic() - began)))
        if goal is None:
            return None, {"primary": "does not answer"}
        event["goal_lsn"] = walnames.format_lsn(goal)
        return self.health.wait(goal, max(1.0, timeout - (time.monotonic() - began)))

    def do_capturer_restart(self, event: dict) -> None:
        old = self.driver.pid("capturer")
        event.update(target="capturer", pid=old)
        self.driver.restart("capturer")
        if old and not procs.wait_gone(old, 30):
            raise ChaosError("capturer did not stop within 30 s after a restart request")

    def do_capturer_kill(self, event: dict) -> None:
        event.update(target="capturer", pid=self.driver.pid("capturer"))
        self.driver.kill("capturer")

    def do_primary_restart(self, event: dict) -> None:
        event.update(target="primary", pid=self.driver.pid("primary"))
        self.driver.restart("primary")
        event["new_pid"] = self.driver.pid("primary")

    def do_primary_pause(self, event: dict) -> None:
        self._pause("primary", event)

    def do_standby_pause(self, event: dict) -> None:
        self._pause("standby", event)

    def _pause(self, role: str, event: dict) -> None:
        seconds = round(self.rng.uniform(*self.params.pause), 2)
        event.update(target=role, pid=self.driver.pid(role), paused_seconds=seconds)
        self.driver.resume_later(role, seconds + 5)
        self.driver.pause(role)
        try:
            time.sleep(seconds)
        finally:
            self.driver.resume(role)

    def do_indexer_kill(self, event: dict) -> None:
        target = indexer_target()
        if target is None:
            raise ChaosError("indexer_kill: the Celery worker or beat is not running")
        name, pid = target
        event.update(target=name, pid=pid)
        os.kill(pid, signal.SIGKILL)
        procs.wait_gone(pid, 10)

    def do_bitrot(self, event: dict) -> None:
        from chaos.health import indexed_to

        self.complete_a_segment()
        assert self.run_row.backup is not None  # set by Chaos.run before any action
        damage = rot_segment(self.driver.layout.archive, self.run_row.backup.start_lsn or 0)
        event.update(target=damage.path.name, offset=damage.offset, bytes=len(damage.original))
        self._judge_and_repair(damage, event, indexed_to())

    def do_stray(self, event: dict) -> None:
        from chaos.health import indexed_to

        assert self.run_row.backup is not None  # set by Chaos.run before any action
        indexed, stop = indexed_to(), self.run_row.backup.stop_lsn or 0
        damage = stray_history(self.driver.layout.archive, max(stop, indexed - (indexed - stop) // 2))
        event.update(target=damage.path.name)
        self._judge_and_repair(damage, event, indexed)

    def _judge_and_repair(self, damage: Damage, event: dict, indexed: int) -> None:
        """Restore to the latest WAL, record whether the damage was caught, then undo it and reindex."""
        from walcatalog.indexer import index_archive

        try:
            self.index_once()
            verdict = restore_latest_caught(damage, self.dir, self.run_row.writer_ids,
                                            self.driver.layout.port("restore_target"), indexed)
        finally:
            damage.repair()
            damage.forget()
            index_archive()
        event.update(**verdict)
        if not verdict["caught"]:
            detail = verdict.get("restore_error") or \
                f"{verdict['missing_count']} rows missing, {verdict['extra_count']} extra"
            raise ChaosError(f"{event['action']} not caught: the latest restore {verdict['how']} ({detail})")

    def complete_a_segment(self) -> None:
        """Switch WAL and wait until the catalog holds the completed segment: bitrot needs one after the backup."""
        from chaos.health import indexed_to

        with pg.connect(self.driver.layout.port("primary"), dbname="postgres", timeout=5) as conn:
            row = conn.execute("SELECT pg_switch_wal()::text").fetchone()
            assert row is not None
            switched = walnames.parse_lsn(row[0])
        deadline = time.monotonic() + self.params.recovery_timeout
        while indexed_to() < switched and time.monotonic() < deadline:
            self.index_once()
            time.sleep(0.5)

    def index_once(self) -> None:
        from walcatalog.indexer import index_archive

        try:
            index_archive()
        except PitrError as exc:  # the damage itself may make the indexer complain: the restore decides
            self.reporter.log(f"index pass after damage: {exc}")

    def heal(self) -> None:
        """Resume anything paused and make sure the capturer runs: the fleet is left as found."""
        for role in ("primary", "standby"):
            if self.driver.state(role) == "paused":
                self.driver.resume(role)
        if self.driver.state("capturer") == "stopped":
            self.driver.start("capturer")  # idempotent: a capturer its supervisor is about to restart is left to it

