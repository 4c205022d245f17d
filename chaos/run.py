"""Chaos runs: concurrent writers, injected failures, then restores to logged moments checked row for row.

One domain function, run_chaos(run, reporter), behind `manage.py chaos`,
`manage.py demo` and the Celery task. A run:

1. checks the fleet and takes a base backup (older than every moment it will pick);
2. starts N writers (chaos.writers) and, every MIN..MAX seconds (counted from
   the previous action's recovery), one chaos action (chaos.actions), each
   followed by a wait until the system is healthy again on its own
   (chaos.health); the actions come in a random order, each once per round,
   so a short run still covers them all;
3. stops the writers, resolves unknown outcomes on the primary, reads every
   commit's WAL position with pg_waldump and writes verification_log.jsonl (chaos.log);
4. restores to K moments (chaos.moments) through the normal restore engine and
   checks each (chaos.check), then records the verdict (chaos.report).

Files live in PITR_HOME/chaos/run-<id>/: writes-<writer>.jsonl while running,
verification_log.jsonl and report.json at the end.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

from chaos import log as vlog
from chaos.actions import Actions, indexer_target
from chaos.check import verify_moment
from chaos.health import Health
from chaos.log import LoggedRow
from chaos.models import ChaosRun
from chaos.moments import Moment, pick_moments
from chaos.params import ChaosError, ChaosParams
from chaos.report import conclude, describe_moment
from chaos.writers import Watchdog, Writer, iso
from fleet import pg, servers
from fleet.driver import FleetDriver, get_driver
from fleet.status import fleet_check
from pitrsite import home, locks
from pitrsite.errors import PitrError, StepFailed, VerdictFailed
from pitrsite.jobs import JobReporter, Reporter, reap, run_exclusive
from walcatalog import walnames


# --- entry points ----------------------------------------------------------------------------
def queue_chaos(params: dict | ChaosParams | None = None, trigger: str = "command") -> ChaosRun:
    """Validate parameters and the fleet first: an impossible run never becomes a row."""
    chosen = params if isinstance(params, ChaosParams) else ChaosParams.from_dict(params)
    server = servers.chosen()
    if server is not None and not server.managed:
        raise ChaosError(f"chaos refused: {server.name} is an external server, and pitrsite does not pause or kill "
                         "servers it does not run (restores and drills of it still work)")
    locks.CHAOS.refuse_if_held()
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
        run_exclusive(run, locks.CHAOS, reporter, lambda: Chaos(run, reporter).run())
    except PitrError as exc:
        if not isinstance(exc, VerdictFailed):
            raise
    run.refresh_from_db()
    return run


def preflight(params: ChaosParams, driver: FleetDriver) -> None:
    for action in params.actions:
        try:
            driver.check_action(action)
        except PitrError as exc:
            raise ChaosError(str(exc)) from None
    problems = fleet_check(driver)
    if problems:
        raise ChaosError(f"the fleet is not ready: {problems[0]}")
    if "indexer_kill" in params.actions and indexer_target() is None:
        raise ChaosError("the indexer_kill action needs the Celery worker and beat running under the supervisor: "
                         "run `python manage.py services up`, or leave it out with --actions")

def run_dir_of(run: ChaosRun) -> Path:
    return home.chaos_dir(f"run-{run.pk}")



# --- the run ---------------------------------------------------------------------------------------
class Chaos(Actions):
    def __init__(self, run: ChaosRun, reporter: Reporter, driver: FleetDriver | None = None):
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
        self.run_row.save_fields(**fields)

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
            raise StepFailed("settling", f"not healthy after {self.params.recovery_timeout:.0f} s: "
                             f"{'; '.join(f'{k}: {v}' for k, v in failing.items())}")
        from restores.engine import refresh_catalog

        refresh_catalog()

        self.reporter.step("resolving unknown writes")
        rows, resolution = vlog.collect(self.dir, writer_ids, self.port, self.run_tag)
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
        vlog.save_log(self.dir / "verification_log.jsonl", header, rows)

        moments, picked = self.pick(rows, backup)
        checks = self.verify_moments(rows, moments, writer_ids)
        self.reporter.step("verifying")
        conclude(self, header, resolution, lsns, picked, moments, checks)

    # --- preparing --------------------------------------------------------------------------
    def pick_writer_ids(self) -> list[int]:
        """Writer ids nobody used yet, so UNIQUE (writer, seq) and the comparisons see only this run."""
        with pg.connect(self.port, timeout=5) as conn:
            top = pg.fetch_row(conn.execute("SELECT coalesce(max(writer), 0) FROM test_data"))[0]
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
                now = int(time.time())  # the current second is still counting: shown once it is over
                self.update(writes_count=self.committed_so_far(),
                            writes_series=[[s, n] for s, n in sorted(self.per_second.copy().items()) if s < now])
            dead = [w for w in self.writers if not w.is_alive()]
            if dead:
                raise StepFailed("writing", f"writer {dead[0].writer_id} stopped: {dead[0].fatal}")
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


    def stop_writers(self) -> None:
        if not self.writers:
            return
        self.stop.set()
        for writer in self.writers:
            writer.join(self.params.statement_timeout + 15)
        self.watchdog.stop()

    def writer_report(self) -> list[dict]:
        return [{"writer": w.writer_id, **asdict(w.stats), "fatal": w.fatal} for w in self.writers]

    # --- verifying --------------------------------------------------------------------------------
    def commit_lsns(self, rows: list[LoggedRow], start_lsn: int, end_lsn: int) -> dict:
        from walcatalog.catalog import segment_size

        with pg.connect(self.port, dbname="postgres", timeout=5) as conn:
            timeline = int(pg.fetch_row(conn.execute("SELECT timeline_id FROM pg_control_checkpoint()"))[0])
        return vlog.attach_commit_lsns(rows, self.driver.layout.archive, timeline, segment_size(),
                                         start_lsn, end_lsn)

    def pick(self, rows: list[LoggedRow], backup) -> tuple[list[Moment], dict]:
        from walcatalog.catalog import recoverable_window

        window = recoverable_window()
        if window is None or window.end is None:
            raise StepFailed("picking moments", "the catalog has no recoverable window")
        after = max(window.start or backup.stop_time, backup.stop_time)
        until = window.end - timedelta(seconds=self.params.restore_offset)  # T + offset must stay restorable
        moments, picked = pick_moments(rows, self.params.restores, after, until, self.rng)
        picked.update(window=window.description, requested=self.params.restores, picked=len(moments))
        return moments, picked

    def verify_moments(self, rows: list[LoggedRow], moments: list[Moment],
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



def series(rows: list[LoggedRow]) -> list[list[int]]:
    """Commits per second: [[unix second, count], ...]."""
    counts: dict[int, int] = {}
    for row in rows:
        second = int(row.committed_at.timestamp())
        counts[second] = counts.get(second, 0) + 1
    return [[second, counts[second]] for second in sorted(counts)]


