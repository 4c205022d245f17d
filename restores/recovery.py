"""Recovery in the restore target, once the engine has put the backup and the WAL in place.

Configure (recovery.signal, a plain `cp` restore_command from the staging directory, the plan's target),
start the server, follow replay until it pauses at the target (or, for the latest WAL, promotes itself),
make the copy durable and promote it, then prove it ended where the plan said and takes writes
(restores/proof.py). Only the restore target is touched here; the job row records replay progress.
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import psycopg
from django.conf import settings
from django.utils import timezone

from fleet import pg, pgconf, servers
from fleet.driver import FleetDriver
from pitrsite import procs
from pitrsite.errors import PitrError, StepFailed, first_line
from pitrsite.jobs import Reporter
from restores.models import RestoreJob
from restores.planner import Plan
from restores.proof import ServerLog, end_of_recovery, recovery_shortfall
from restores.staging import sync_tree
from walcatalog import walnames

ROLE = "restore_target"
# No restartpoint during replay (a restore that dies is redone from the backup, never resumed): they would
# write and fsync buffers the end-of-recovery checkpoint writes anyway. Dropped after promotion, with a reload.
REPLAY_SETTINGS = {"max_wal_size": "64GB", "checkpoint_timeout": "1d"}
# PostgreSQL's default 128 MB evicts the pages replay dirties, to dirty and write them again: 512 MB replayed 481 MB
# of pgbench WAL (scale 80) in 3.84 s, 128 MB in 4.70 s (medians, this machine). Only ever raised, and at most an
# eighth of the memory. It needs a restart to change, so the copy keeps it until its next restart.
REPLAY_SHARED_BUFFERS = 512 << 20
# Replay to a target runs with fsync=off. PostgreSQL then skips its start-up fsync of the whole data directory
# (it waited for the disk to take every extracted file before replaying anything) and the fsyncs of replay,
# so the disk writes the copy while replay runs. Nothing is called durable while it is off: near the target
# fsync goes back on by reload, and only then is the promotion asked for, which PostgreSQL carries out at the
# target (recovery_target_action=pause: it pauses there, or promotes at once when asked before), so the
# end-of-recovery record and checkpoint and all that follows run with fsync on (PostgreSQL keeps fsync
# requests while it is off, so that turning it on "behaves sensibly", sync.c). pitrsite then fsyncs every
# file of the copy (staging.sync_tree) before the job can end done. A crash before that may leave a corrupt
# copy: its job is failed, and the next restore empties it. The latest WAL has no target to pause at, so it
# replays with fsync on.
# A plain cp: PostgreSQL runs this once per file, so it must not start Python or Django.
RESTORE_COMMAND = 'cp "{staging}/%f" "%p"'
POLL = 0.05  # s between two looks at a replaying server (a connection each)
# The promotion is asked for once replay, at the pace seen so far, is this close to its goal (or in the
# second-to-last segment): arming takes a reload and a session, and must be done before the target is reached,
# or replay pauses there and promotes through a blocking checkpoint (0.2 s at scale 10, where a poll can see
# replay cross a whole segment).
ARM_AHEAD = 0.5  # s
UNTIL_DURABLE = {"fsync": "off", "hot_standby": "on"}  # hot_standby: without it, pause acts as shutdown


def login_refused(exc: psycopg.OperationalError) -> bool:
    """An answer from a running server that no retry changes (not "starting up", not "connection refused")."""
    text = str(exc)
    return any(what in text for what in ("authentication failed", "no pg_hba.conf entry", "does not exist"))


class Recovery:
    def __init__(self, job: RestoreJob, reporter: Reporter, driver: FleetDriver, staging: Path):
        self.job, self.reporter, self.driver, self.staging = job, reporter, driver, staging
        self.datadir = driver.layout.datadir(ROLE)
        self.logfile = driver.layout.logfile(ROLE)
        self.session: psycopg.Connection | None = None  # probe's

    def run(self, the_plan: Plan) -> None:
        self.reporter.step("configuring recovery")
        pauses = the_plan.recovery.get("recovery_target_action") == "pause"
        for stale in ("standby.signal", "postmaster.pid", "recovery.done"):
            (self.datadir / stale).unlink(missing_ok=True)
        self.driver.put_file(ROLE, "recovery.signal", "")
        self.configure(the_plan, UNTIL_DURABLE if pauses else {})
        log_offset: int | None = None
        try:
            self.reporter.step("replaying WAL")
            log_offset = self.log_size()
            self.driver.start(ROLE, wait=False)
            promoted = self.follow_replay(the_plan, log_offset, arm_at=self.arm_at(the_plan) if pauses else None)
            if pauses:
                self.reporter.step("syncing the copy to disk")
                if not promoted:  # it paused before the promotion was asked for
                    self.fsync_back_on(the_plan)
                sync_tree(self.datadir)
                if not promoted:
                    self.reporter.step("promoting")
                    self.resume_to_promote()
            self.reporter.step("verifying")
            self.verify(the_plan, log_offset)
        finally:
            self.close_session()
            self.copy_server_log(log_offset)

    def configure(self, the_plan: Plan, until_durable: dict[str, str]) -> None:
        self.driver.write_node_conf(ROLE, {
            "restore_command": RESTORE_COMMAND.format(staging=self.staging),
            **REPLAY_SETTINGS,
            **self.replay_shared_buffers(),
            **until_durable,
            **the_plan.recovery,
        })

    def arm_at(self, the_plan: Plan) -> int:
        """Where replay is close enough to its target to turn fsync back on: the second-to-last segment."""
        segments = the_plan.segments
        return segments[-2].start_lsn if len(segments) >= 2 else 0

    def fsync_back_on(self, the_plan: Plan) -> None:
        self.configure(the_plan, {})
        with self.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")
        # A new session has the postmaster's settings: once it reads fsync=on, the postmaster has reloaded and
        # signalled every process, which each reload before they act on a promotion asked for after this.
        deadline = time.monotonic() + 30
        while not self.setting_is("fsync", "on"):
            if time.monotonic() > deadline:
                raise StepFailed("replaying WAL", "the restored copy did not reload fsync=on in 30 s")
            time.sleep(0.02)

    def arm_promotion(self, the_plan: Plan) -> None:
        """Near the target: fsync back on, and the promotion asked for before replay pauses there.

        In archive recovery (recovery.signal, not standby.signal) PostgreSQL looks for a promotion request only
        where it pauses: asked for now, it promotes the moment it reaches its target, never before (xlogrecovery.c
        checks the request while reading WAL only in standby mode). Asked for once paused, PostgreSQL 15 would see
        it only at its pause loop's next wake-up, up to 1 s later.
        """
        self.fsync_back_on(the_plan)
        with self.connect() as conn:
            conn.execute("SELECT pg_promote(false)")

    def resume_to_promote(self) -> None:
        """Paused at the target before the promotion was asked for: resuming ends recovery, and PostgreSQL
        promotes after a blocking end-of-recovery checkpoint (with fsync on)."""
        with self.connect() as conn, contextlib.suppress(psycopg.errors.ObjectNotInPrerequisiteState):
            conn.execute("SELECT pg_wal_replay_resume()")  # refused only once promoting: a request armed late
        deadline = time.monotonic() + settings.PITR_RESTORE_TIMEOUT
        while time.monotonic() < deadline:
            state = self.probe()
            if state is not None and not state[0]:
                return
            if not procs.alive(self.driver.pid(ROLE)):
                raise StepFailed("promoting", f"the server exited: see {self.logfile}")
            time.sleep(POLL)
        raise StepFailed("promoting", f"not promoted after {settings.PITR_RESTORE_TIMEOUT:.0f} s")

    def setting_is(self, name: str, value: str) -> bool:
        with self.connect() as conn:
            return pg.fetch_row(conn.execute("SELECT current_setting(%s)", [name]))[0] == value

    def log_size(self) -> int:
        return self.logfile.stat().st_size if self.logfile.exists() else 0

    def replay_shared_buffers(self) -> dict[str, str]:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        size = min(REPLAY_SHARED_BUFFERS, memory // 8)
        own = pgconf.memory_setting(self.datadir, "shared_buffers") or 128 << 20
        return {"shared_buffers": f"{size >> 20}MB"} if size > own else {}

    def copy_server_log(self, offset: int | None, limit: int = 5000) -> None:
        """The restored server's own lines (recovery, promotion) into the job's log."""
        if offset is None:
            return
        try:
            with open(self.logfile, "rb") as fh:
                fh.seek(offset)
                lines = fh.read().decode(errors="replace").splitlines()
        except OSError:
            return
        for line in lines[-limit:]:
            self.reporter.log(f"server: {line}")

    def server_fatal(self, offset: int) -> str | None:
        log = ServerLog.read(self.logfile, offset)
        return log.reason() if log.fatal else None

    def follow_replay(self, the_plan: Plan, log_offset: int, arm_at: int | None) -> bool:
        """Poll replay progress until the server promotes (True) or pauses at its target (False).

        From `arm_at` on, or from ARM_AHEAD s before the goal at replay's pace (replay to a target), the
        promotion is asked for ahead of the target (arm_promotion).
        """
        start = the_plan.backup.start_lsn
        goal = the_plan.target_lsn or (the_plan.segments[-1].end_lsn if the_plan.segments else the_plan.backup.stop_lsn)
        assert start is not None and goal is not None  # the plan's backup is verified: it has its LSNs
        deadline = time.monotonic() + settings.PITR_RESTORE_TIMEOUT
        started_by = time.monotonic() + 30  # pg_ctl -W returns before postmaster.pid is written
        first: tuple[float, int] | None = None  # (when, where) replay was first seen: its pace
        while time.monotonic() < deadline:
            pid = self.driver.pid(ROLE)
            if not procs.alive(pid) and time.monotonic() < started_by and self.server_fatal(log_offset) is None:
                time.sleep(0.1)
                continue
            started_by = 0.0
            if not procs.alive(pid):
                why = self.server_fatal(log_offset) or f"the server exited: see {self.logfile}"
                raise StepFailed("replaying WAL", why)
            state = self.probe()
            if state is not None:
                in_recovery, replay, paused = state
                if replay is not None:
                    self.job.save_fields(replay_lsn=replay)
                    self.reporter.progress(max(0, replay - start), max(1, goal - start))
                if paused:
                    return False
                if not in_recovery:
                    self.reporter.step("promoting")
                    return True
                if arm_at is not None and replay is not None:
                    now = time.monotonic()
                    first = first or (now, replay)
                    pace = (replay - first[1]) / (now - first[0]) if now > first[0] else 0.0
                    if replay >= arm_at or goal - replay <= pace * ARM_AHEAD:
                        self.arm_promotion(the_plan)
                        arm_at = None
            time.sleep(POLL)
        raise StepFailed("replaying WAL", f"not promoted after {settings.PITR_RESTORE_TIMEOUT:.0f} s")

    def probe(self) -> tuple[bool, int | None, bool] | None:
        """(in recovery, replay LSN, paused) through one session kept open between looks (a connection each
        time, 20 a second, would cost a backend's start-up each); None while the server takes no session."""
        try:
            if self.session is None or self.session.closed:
                self.session = self.connect(timeout=2)
                self.session.autocommit = True
            in_recovery, replay, pause = pg.fetch_row(self.session.execute(
                "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
                "CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END"))
        except psycopg.OperationalError as exc:
            self.close_session()
            if login_refused(exc):  # it will never let us in: waiting PITR_RESTORE_TIMEOUT would prove nothing
                self.driver.stop(ROLE, mode="immediate")
                raise StepFailed("replaying WAL", f"the restored copy refuses pitrsite's login ({first_line(exc)}); "
                                 "the restore target was stopped") from None
            return None  # not accepting connections yet (before consistency)
        except (PitrError, psycopg.Error):
            self.close_session()
            return None
        return in_recovery, walnames.parse_lsn(replay) if replay else None, pause == "paused"

    def close_session(self) -> None:
        if self.session is not None:
            with contextlib.suppress(psycopg.Error):
                self.session.close()
            self.session = None

    def connect(self, timeout: int = 5) -> psycopg.Connection:
        # Through the copy's private socket, which the pg_hba.conf line written ahead of the original's trusts:
        # a new home knows none of the original's passwords. The copy's superuser is the original's.
        user = servers.current().user or settings.PITR_PG_SUPERUSER
        return self.driver.connect_own(ROLE, user, timeout)

    def verify(self, the_plan: Plan, log_offset: int) -> None:
        with self.connect() as conn:
            # Only a read-write server can assign a transaction id: proves promotion, changes no data.
            conn.execute("SELECT txid_current()")
            tli = int(pg.fetch_row(conn.execute("SELECT timeline_id FROM pg_control_checkpoint()"))[0])
        end_lsn, reason, new_tli = end_of_recovery(self.datadir / "pg_wal")
        problem = recovery_shortfall(the_plan, end_lsn, ServerLog.read(self.logfile, log_offset))
        if problem:
            # A copy that stopped short must not be taken for the moment asked for.
            self.driver.stop(ROLE, mode="immediate")
            raise StepFailed("verifying", f"{problem}; the restore target was stopped")
        self.driver.write_node_conf(ROLE)  # recovery is over: drop restore_command, the target, REPLAY_SETTINGS
        with self.connect() as conn:
            conn.execute("SELECT pg_reload_conf()")
        self.job.save_fields(promoted_at=timezone.now(), final_lsn=end_lsn, final_timeline=new_tli or tli,
                             plan={**self.job.plan, "stop_reason": reason})
