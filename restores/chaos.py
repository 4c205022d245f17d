"""Chaos runs: concurrent writers, injected failures, then restores to logged moments checked row for row.

One domain function, run_chaos(run, reporter), behind `manage.py chaos`,
`manage.py demo` and the Celery task. A run:

1. checks the fleet and takes a base backup (older than every moment it will pick);
2. starts N writers (restores.chaos_writers) and, every MIN..MAX seconds
   (counted from the previous action's recovery), one chaos action through
   the fleet driver, each followed by a wait until the
   system is healthy again on its own (see Health); the actions come in a
   random order, each once per round, so a short run still covers them all;
3. stops the writers, resolves unknown outcomes on the primary, reads every
   commit's WAL position with pg_waldump and writes verification_log.json;
4. restores to K moments through the normal restore engine and checks each
   (restores.verify), then records the verdict.

Files live in PITR_HOME/chaos/run-<id>/: writes-<writer>.jsonl while running,
verification_log.json and report.json at the end.

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

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import psycopg
from django.conf import settings
from django.db.models import Max

from fleet import pg, services
from fleet.local import LocalDriver, get_driver
from fleet.status import fleet_check
from pitrsite import procs
from pitrsite.errors import PitrError
from pitrsite.jobs import JobReporter, Reporter, exclusive, reap, run_job
from restores import verify
from restores.chaos_writers import Watchdog, Writer, iso, now_iso
from restores.models import ChaosRun, Verdict
from walcatalog import walnames

log = logging.getLogger(__name__)

ACTIONS = ("capturer_restart", "capturer_kill", "primary_pause", "standby_pause", "indexer_kill")
ACTION_HELP = {
    "capturer_restart": "graceful restart of pg_receivewal (SIGHUP to its supervisor)",
    "capturer_kill": "SIGKILL of pg_receivewal; its supervisor starts it again",
    "primary_pause": "SIGSTOP of the primary for a few seconds (a network partition), then SIGCONT",
    "standby_pause": "SIGSTOP of the standby for a few seconds (hot-standby desync), then SIGCONT",
    "indexer_kill": "SIGKILL of the Celery worker running the WAL indexer (beat when the run is inside the worker)",
}


class ChaosError(PitrError):
    pass


class VerdictFailed(PitrError):
    """The run worked and its verification found a difference (or an action that never recovered)."""


# --- parameters ---------------------------------------------------------------------------
def _range(value, name: str) -> tuple[float, float]:
    if isinstance(value, str):
        parts = value.replace("–", "-").split("-")
        if len(parts) != 2:
            raise ChaosError(f"{name} {value!r} is not MIN-MAX seconds, e.g. 30-60")
        value = parts
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ChaosError(f"{name} {value!r} is not MIN-MAX seconds, e.g. 30-60") from None
    if not (0 < low <= high):
        raise ChaosError(f"{name} {low:g}-{high:g}: need 0 < MIN <= MAX")
    return low, high


def _actions(value) -> tuple[str, ...]:
    if value is None:
        return ACTIONS
    # "all", "" or an empty list mean every action (the dashboard's form sends [] for all); "none" means none.
    if isinstance(value, str):
        value = value.split(",")
    names = tuple(dict.fromkeys(v.strip().lower() for v in value if v.strip()))
    if names in ((), ("all",)):
        return ACTIONS
    if names == ("none",):
        return ()
    unknown = [n for n in names if n not in ACTIONS]
    if unknown:
        raise ChaosError(f"unknown chaos action {unknown[0]!r}: choose from {', '.join(ACTIONS)}, all or none")
    return names


@dataclass(frozen=True)
class ChaosParams:
    writers: int = 5
    duration: float = 600.0  # seconds of writing with chaos
    interval: tuple[float, float] = (30.0, 60.0)  # seconds between actions
    restores: int = 20  # moments restored and verified
    actions: tuple[str, ...] = ACTIONS
    pause: tuple[float, float] = (2.0, 5.0)  # how long a paused server stays paused
    write_pause: float = 0.1  # mean seconds between one writer's commits
    statement_timeout: float = 1.0  # client-side deadline of one statement (shorter than a pause)
    recovery_timeout: float = 180.0  # an action must be recovered from within this
    seed: int | None = None
    # Self-test only: restore to T + offset but compare with the log at T. The run must then fail;
    # it proves the checks catch an inexact restore. Always 0 in a real run.
    restore_offset: float = 0.0

    @classmethod
    def from_dict(cls, data: dict | None) -> "ChaosParams":
        data = dict(data or {})
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ChaosError(f"unknown chaos parameter {sorted(unknown)[0]!r}")
        defaults = cls()

        def number(name: str, low: float, high: float, kind=float):
            value = data.get(name, getattr(defaults, name))
            try:
                value = kind(value)
            except (TypeError, ValueError):
                raise ChaosError(f"{name} {value!r} is not a number") from None
            if not (low <= value <= high):
                raise ChaosError(f"{name} must be from {low:g} to {high:g}, got {value:g}")
            return value

        seed = data.get("seed")
        if seed not in (None, ""):
            try:
                seed = int(seed)
            except (TypeError, ValueError):
                raise ChaosError(f"seed {seed!r} is not a whole number") from None
        else:
            seed = None
        return cls(writers=number("writers", 1, 32, int), duration=number("duration", 5, 86400),
                   interval=_range(data.get("interval", defaults.interval), "interval"),
                   restores=number("restores", 1, 500, int), actions=_actions(data.get("actions")),
                   pause=_range(data.get("pause", defaults.pause), "pause"),
                   write_pause=number("write_pause", 0.0, 60.0),
                   statement_timeout=number("statement_timeout", 0.5, 60.0),
                   recovery_timeout=number("recovery_timeout", 10, 3600), seed=seed,
                   restore_offset=number("restore_offset", 0.0, 3600.0))

    def as_dict(self) -> dict:
        data = asdict(self)
        # No actions is stored as "none": an empty list reads back as all of them.
        data.update(interval=list(self.interval), pause=list(self.pause), actions=list(self.actions) or "none")
        return data


# --- entry points ----------------------------------------------------------------------------
def queue_chaos(params: dict | ChaosParams | None = None, trigger: str = "command") -> ChaosRun:
    """Validate parameters and the fleet first: an impossible run never becomes a row."""
    chosen = params if isinstance(params, ChaosParams) else ChaosParams.from_dict(params)
    preflight(chosen, get_driver())
    return ChaosRun.objects.create(parameters=chosen.as_dict(), trigger=trigger)


def run_chaos(run: ChaosRun, reporter: Reporter) -> ChaosRun:
    """The one domain function behind the chaos and demo commands and the Celery task.

    A failed verification leaves the run failed with verdict 'failed' and
    returns it (the callers look at the verdict); anything else that stops
    the run raises a PitrError.
    """
    reap(ChaosRun)
    try:
        with exclusive("chaos", "chaos run"):
            run_job(run, reporter, lambda: Chaos(run, reporter).run())
    except PitrError as exc:
        if not isinstance(exc.__cause__, VerdictFailed):
            raise
    run.refresh_from_db()
    return run


def preflight(params: ChaosParams, driver: LocalDriver) -> None:
    problems = fleet_check(driver)
    if problems:
        raise ChaosError(f"the fleet is not ready: {problems[0]}")
    if "indexer_kill" in params.actions and indexer_target() is None:
        raise ChaosError("the indexer_kill action needs the Celery worker and beat running under the supervisor: "
                         "run `python manage.py services up`, or leave it out with --actions")


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
    current: int | None = os.getpid()
    while current and current > 1:
        if current == pid:
            return True
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
        except OSError:
            return False
        current = int(stat[stat.rindex(")") + 2:].split()[1])
    return False


def restarted(name: str, old_pid: int) -> dict | None:
    """The service's status once its supervisor runs a new process in place of old_pid."""
    status = services.status(name)
    return status if status["state"] == "running" and status["pid"] != old_pid else None


def run_dir_of(run: ChaosRun) -> Path:
    return Path(settings.PITR_HOME) / "chaos" / f"run-{run.pk}"


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

    def __init__(self, driver: LocalDriver, since_lsn: int, use_services: bool):
        self.driver, self.since_lsn, self.use_services = driver, since_lsn, use_services

    def primary_lsn(self) -> int | None:
        try:
            with pg.connect(self.driver.layout.port("primary"), dbname="postgres", timeout=2,
                            options="-c statement_timeout=2000") as conn:
                return walnames.parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
        except (PitrError, psycopg.Error):
            return None

    def failures(self, goal: int) -> dict[str, str]:
        """What is not healthy yet (empty: healthy)."""
        failing: dict[str, str] = {}
        try:
            with pg.connect(self.driver.layout.port("primary"), dbname="postgres", timeout=2,
                            options="-c statement_timeout=2000") as conn:
                rows = conn.execute("SELECT application_name, state, flush_lsn::text, replay_lsn::text "
                                    "FROM pg_stat_replication").fetchall()
        except (PitrError, psycopg.Error) as exc:
            return {"primary": pg.first_line(str(exc))}
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


def indexed_to() -> int:
    """How far the catalog has read the WAL: the end of the newest complete segment or the partial's scan."""
    from walcatalog.models import WalSegment

    complete = WalSegment.objects.filter(is_partial=False).aggregate(m=Max("end_lsn"))["m"] or 0
    partial = WalSegment.objects.filter(is_partial=True).aggregate(m=Max("scanned_to"))["m"] or 0
    return max(complete, partial)


# --- the run ---------------------------------------------------------------------------------------
class Chaos:
    def __init__(self, run: ChaosRun, reporter: Reporter, driver: LocalDriver | None = None):
        self.run_row, self.reporter = run, reporter
        self.params = ChaosParams.from_dict(run.parameters)
        self.driver = driver or get_driver()
        self.rng = random.Random(self.params.seed)
        self.dir = run_dir_of(run)
        self.events: list[dict] = []
        self.verifications: list[dict] = []
        self.writers: list[Writer] = []
        self.port = self.driver.layout.port("primary")
        self.run_tag = f"chaos-{self.dir.name}"  # chaos-run-<id>

    def update(self, **fields) -> None:
        for key, value in fields.items():
            setattr(self.run_row, key, value)
        ChaosRun.objects.filter(pk=self.run_row.pk).update(**fields)

    def run(self) -> None:
        self.reporter.step("checking the fleet")
        preflight(self.params, self.driver)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.health = Health(self.driver, 0, use_services=indexer_target() is not None)
        writer_ids = self.pick_writer_ids()
        self.update(run_dir=str(self.dir), writer_ids=writer_ids)

        self.reporter.step("backing up")
        backup = self.backup()
        self.update(backup=backup)
        start_lsn = self.health.primary_lsn() or 0
        self.health.since_lsn = start_lsn

        self.reporter.step("writing with chaos")
        began = datetime.now(timezone.utc)
        try:
            self.chaos_phase(writer_ids)
        finally:
            self.stop_writers()
            self.heal()
        ended = datetime.now(timezone.utc)

        self.reporter.step("settling")
        goal = self.health.primary_lsn() or start_lsn
        settled_at, failing = self.health.wait(goal, self.params.recovery_timeout)
        if settled_at is None:
            raise ChaosError(f"failure settling (not healthy after {self.params.recovery_timeout:.0f} s: "
                             f"{'; '.join(f'{k}: {v}' for k, v in failing.items())})")
        from restores.engine import refresh_catalog

        refresh_catalog()

        self.reporter.step("resolving unknown writes")
        rows, resolution = verify.collect(self.dir, writer_ids, self.port, self.run_tag)
        self.update(writes_count=len(rows), unknown_count=resolution["unknown_attempts"],
                    writes_series=series(rows))
        self.reporter.step("reading commit LSNs")
        lsns = self.commit_lsns(rows, start_lsn, goal)
        header = {"run": self.run_row.pk, "parameters": self.params.as_dict(), "writer_ids": writer_ids,
                  "backup": {"id": backup.pk, "label": backup.label, "stop_time": iso(backup.stop_time),
                             "stop_lsn": backup.stop_lsn_text},
                  "chaos_began": iso(began), "chaos_ended": iso(ended), "start_lsn": walnames.format_lsn(start_lsn),
                  "end_lsn": walnames.format_lsn(goal), "resolution": resolution, "commit_lsns": lsns,
                  "writers": self.writer_report(), "created_at_semantics": "now() of the inserting transaction "
                  "(one INSERT per transaction), never later than committed_at"}
        verify.save_log(self.dir / "verification_log.json", header, rows)

        moments, picked = self.pick(rows, backup)
        checks = self.verify_moments(rows, moments, writer_ids)
        self.reporter.step("verifying")
        self.conclude(header, resolution, lsns, picked, moments, checks)

    # --- preparing --------------------------------------------------------------------------
    def pick_writer_ids(self) -> list[int]:
        """Writer ids nobody used yet, so UNIQUE (writer, seq) and the comparisons see only this run."""
        with pg.connect(self.port, timeout=5) as conn:
            top = conn.execute("SELECT coalesce(max(writer), 0) FROM test_data").fetchone()[0]
        base = (top // 100 + 1) * 100 + 1
        return list(range(base, base + self.params.writers))

    def backup(self):
        from walcatalog.backups import queue_backup, run_backup

        backup = queue_backup(trigger="chaos")
        backup = run_backup(backup, JobReporter(backup))
        self.reporter.log(f"base backup {backup.label} (#{backup.pk}) ends at {backup.stop_lsn_text}")
        return backup

    # --- writing with chaos ---------------------------------------------------------------------
    def chaos_phase(self, writer_ids: list[int]) -> None:
        self.stop = threading.Event()
        self.watchdog = Watchdog()
        self.watchdog.start()
        tag = self.run_tag  # in payloads and application_name
        self.per_second: dict[int, int] = {}
        for writer_id in writer_ids:
            writer = Writer(writer_id, tag, self.dir / f"writes-{writer_id}.jsonl", self.port, self.stop,
                            self.watchdog, self.params.write_pause, self.params.statement_timeout,
                            random.Random(self.rng.random()), self.per_second)
            writer.start()
            self.writers.append(writer)
        duration = self.params.duration
        began = time.monotonic()
        next_at = began + self.rng.uniform(*self.params.interval)
        bag: list[str] = []
        shown = 0.0
        while (elapsed := time.monotonic() - began) < duration:
            self.reporter.progress(int(elapsed), int(duration))
            if elapsed - shown >= 2.0:  # live figures for the dashboard
                shown = elapsed
                self.update(writes_count=self.committed_so_far(),
                            writes_series=[[s, n] for s, n in sorted(self.per_second.items())])
            dead = [w for w in self.writers if not w.is_alive()]
            if dead:
                raise ChaosError(f"failure writing (writer {dead[0].writer_id} stopped: {dead[0].fatal})")
            if self.params.actions and time.monotonic() >= next_at:
                if not bag:
                    bag = list(self.params.actions)
                    self.rng.shuffle(bag)
                self.inject(bag.pop())
                next_at = time.monotonic() + self.rng.uniform(*self.params.interval)
            time.sleep(min(0.5, max(0.0, duration - elapsed)))
        self.reporter.progress(int(duration), int(duration))

    def committed_so_far(self) -> int:
        return sum(w.stats.committed for w in self.writers)

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
        goal = None
        while goal is None and time.monotonic() - began < timeout:
            goal = self.health.primary_lsn()
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

    def do_primary_pause(self, event: dict) -> None:
        self._pause("primary", event)

    def do_standby_pause(self, event: dict) -> None:
        self._pause("standby", event)

    def _pause(self, role: str, event: dict) -> None:
        seconds = round(self.rng.uniform(*self.params.pause), 2)
        event.update(target=role, pid=self.driver.pid(role), paused_seconds=seconds)
        resume_later(self.driver.pid(role), seconds + 5)
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

    def stop_writers(self) -> None:
        if not self.writers:
            return
        self.stop.set()
        for writer in self.writers:
            writer.join(self.params.statement_timeout + 15)
        self.watchdog.stop()

    def heal(self) -> None:
        """Resume anything paused and make sure the capturer runs: the fleet is left as found."""
        for role in ("primary", "standby"):
            if self.driver.state(role) == "paused":
                self.driver.resume(role)
        if self.driver.state("capturer") == "stopped" and not procs.alive(
                procs.read_pid(self.driver.layout.run / "capturer.supervisor.pid")):
            self.driver.start("capturer")

    def writer_report(self) -> list[dict]:
        return [{"writer": w.writer_id, **asdict(w.stats), "fatal": w.fatal} for w in self.writers]

    # --- verifying --------------------------------------------------------------------------------
    def commit_lsns(self, rows: list[verify.LoggedRow], start_lsn: int, end_lsn: int) -> dict:
        from walcatalog.catalog import segment_size

        with pg.connect(self.port, dbname="postgres", timeout=5) as conn:
            timeline = int(conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0])
        return verify.attach_commit_lsns(rows, self.driver.layout.archive, timeline, segment_size(),
                                         start_lsn, end_lsn)

    def pick(self, rows: list[verify.LoggedRow], backup) -> tuple[list[verify.Moment], dict]:
        from walcatalog.catalog import recoverable_window

        window = recoverable_window()
        if window is None or window.end is None:
            raise ChaosError("failure picking moments (the catalog has no recoverable window)")
        after = max(window.start or backup.stop_time, backup.stop_time)
        until = window.end - timedelta(seconds=self.params.restore_offset)  # T + offset must stay restorable
        moments, picked = verify.pick_moments(rows, self.params.restores, after, until, self.rng)
        picked.update(window=window.description, requested=self.params.restores, picked=len(moments))
        return moments, picked

    def verify_moments(self, rows: list[verify.LoggedRow], moments: list[verify.Moment],
                       writer_ids: list[int]) -> list[dict]:
        total = len(moments)
        for i, moment in enumerate(moments, 1):
            self.reporter.step(f"restoring T {i}/{total}")
            self.reporter.progress(i - 1, total)
            shifted = moment.at + timedelta(seconds=self.params.restore_offset) if self.params.restore_offset else None
            result = verify_moment(rows, moment, writer_ids, self.driver, restore_to=shifted)
            result["index"] = i
            self.verifications.append(result)
            self.update(verifications=self.verifications)
            self.reporter.log(describe_moment(result, total))
        return self.verifications

    def conclude(self, header: dict, resolution: dict, lsns: dict, picked: dict, moments: list, checks: list) -> None:
        problems = []
        bad_events = [e for e in self.events if not e.get("ok")]
        if bad_events:
            problems.append(f"{len(bad_events)} action(s) not recovered ({bad_events[0]['action']})")
        if not resolution["integrity_ok"]:
            problems.append(f"the log disagrees with the primary ({resolution['problems'][0]})")
        if lsns["commits_not_found"]:
            problems.append(f"{lsns['commits_not_found']} logged commit(s) not found in the captured WAL")
        fatal = [w for w in self.writers if w.fatal]
        if fatal:
            problems.append(f"writer {fatal[0].writer_id} died ({fatal[0].fatal})")
        if len(moments) < self.params.restores:
            problems.append(f"only {len(moments)} of {self.params.restores} moments could be picked "
                            f"in the recoverable window")
        passed = sum(1 for c in checks if c["ok"])
        if passed < len(checks):
            problems.append(f"{len(checks) - passed} of {len(checks)} restored moments differ from the log")
        verdict = Verdict.FAILED if problems else Verdict.PASSED
        summary = (f"{verdict.value}: {passed}/{len(checks)} restored moments exact; {len(self.events)} chaos "
                   f"actions, {len(self.events) - len(bad_events)} recovered; {self.run_row.writes_count} commits by "
                   f"{self.params.writers} writers, {resolution['unknown_attempts']} unknown outcomes resolved")
        if problems:
            summary += "; " + "; ".join(problems)
        report = {"run": self.run_row.pk, "verdict": verdict.value, "summary": summary, "passed": passed,
                  "restores": len(checks), **{k: v for k, v in header.items() if k != "parameters"},
                  "parameters": self.params.as_dict(), "moments": picked, "events": self.events,
                  "verifications": checks}
        (self.dir / "report.json").write_text(json.dumps(report, indent=2, default=str))
        self.update(verdict=verdict, summary=summary, events=self.events, verifications=checks)
        if problems:
            raise VerdictFailed(f"failure verifying ({'; '.join(problems)})")


RESUMER = """
import os, signal, sys, time
time.sleep(float(sys.argv[1]))
for pid in sys.argv[2:]:
    try:
        os.kill(int(pid), signal.SIGCONT)
    except OSError:
        pass
"""


def resume_later(pid: int | None, seconds: float) -> None:
    """A detached process that SIGCONTs the server's processes after ``seconds``.

    The run resumes a paused server itself; this is for when the run dies in
    the middle of a pause (SIGKILL, a crash): a primary must never stay
    stopped because its chaos run is gone. A SIGCONT to a running process does nothing.
    """
    if not pid:
        return
    pids = [pid, *procs.descendants(pid)]
    subprocess.Popen([sys.executable, "-c", RESUMER, str(seconds), *map(str, pids)], stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)


def verify_moment(rows: list[verify.LoggedRow], moment: verify.Moment, writer_ids: list[int],
                  driver: LocalDriver, restore_to: datetime | None = None) -> dict:
    """Restore to ``restore_to`` (normally the moment itself) through the restore engine, then check at ``moment``.

    ``restore_to`` differing from the moment is how the tests prove the checks
    catch an inexact restore.
    """
    from pitrsite.jobs import JobState
    from restores.engine import run_restore
    from restores.planner import RestoreTarget
    from restores.service import queue_restore

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
    result.update(verify.check_moment(rows, moment.at, writer_ids, driver.layout.port("restore_target"),
                                      driver.layout.port("primary"), job.final_lsn))
    result["kind"] = moment.kind
    result["seconds"] = round(time.monotonic() - began, 2)
    return result


def describe_moment(result: dict, total: int) -> str:
    head = f"T {result.get('index', '?')}/{total} {result['moment']} ({result['kind']}): "
    if result.get("error"):
        return head + f"FAILED: {result['error']}"
    if result["ok"]:
        return head + (f"exact: {result['expected_rows']} rows, end of recovery {result['end_lsn']['final']}, "
                       f"count {result['count']['restored']}")
    failed = [name for name, ok in result["checks"].items() if not ok]
    return head + (f"FAILED {', '.join(failed)}: missing {result['missing_count']} {result['missing_ids'][:10]}, "
                   f"extra {result['extra_count']} {result['extra_ids'][:10]}, gaps {result['prefix_gaps']}, "
                   f"end LSN {result['end_lsn']}, count {result['count']['restored']} vs {result['count']['expected']}")


def series(rows: list[verify.LoggedRow]) -> list[list[int]]:
    """Commits per second: [[unix second, count], ...]."""
    counts: dict[int, int] = {}
    for row in rows:
        second = int(row.committed_at.timestamp())
        counts[second] = counts.get(second, 0) + 1
    return [[second, counts[second]] for second in sorted(counts)]


def chaos_dict(run: ChaosRun) -> dict:
    from walcatalog.serializers import job_dict

    return {**job_dict(run), "parameters": run.parameters, "verdict": run.verdict or None, "summary": run.summary,
            "writes_count": run.writes_count, "unknown_count": run.unknown_count, "writer_ids": run.writer_ids,
            "backup": run.backup.label if run.backup_id else None, "run_dir": run.run_dir,
            "passed": run.passed_count, "restores": len(run.verifications),
            "events": run.events, "verifications": run.verifications}


__all__ = ["ACTIONS", "ChaosParams", "ChaosError", "queue_chaos", "run_chaos", "verify_moment", "chaos_dict"]
