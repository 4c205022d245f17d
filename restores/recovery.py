"""Recovery in the restore target, once the engine has put the backup and the WAL in place.

Configure (recovery.signal, a plain `cp` restore_command from the staging directory, the plan's target),
start the server, follow replay until it promotes itself, then prove it ended where the plan said and takes
writes (restores/proof.py). Only the restore target is touched here; the job row records replay progress.
"""
from __future__ import annotations

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
from walcatalog import walnames

ROLE = "restore_target"
# No restartpoint during replay (a restore that dies is redone from the backup, never resumed): they would
# write and fsync buffers the end-of-recovery checkpoint writes anyway. Dropped after promotion, with a reload.
REPLAY_SETTINGS = {"max_wal_size": "64GB", "checkpoint_timeout": "1d"}
# PostgreSQL's default 128 MB evicts the pages replay dirties, to dirty and write them again: 512 MB replayed 481 MB
# of pgbench WAL (scale 80) in 3.84 s, 128 MB in 4.70 s (medians, this machine). Only ever raised, and at most an
# eighth of the memory. It needs a restart to change, so the copy keeps it until its next restart.
REPLAY_SHARED_BUFFERS = 512 << 20


def login_refused(exc: psycopg.OperationalError) -> bool:
    """An answer from a running server that no retry changes (not "starting up", not "connection refused")."""
    text = str(exc)
    return any(what in text for what in ("authentication failed", "no pg_hba.conf entry", "does not exist"))


class Recovery:
    def __init__(self, job: RestoreJob, reporter: Reporter, driver: FleetDriver, staging: Path):
        self.job, self.reporter, self.driver, self.staging = job, reporter, driver, staging
        self.datadir = driver.layout.datadir(ROLE)
        self.logfile = driver.layout.logfile(ROLE)

    def run(self, the_plan: Plan) -> None:
        self.reporter.step("configuring recovery")
        self.configure(the_plan)
        log_offset: int | None = None
        try:
            self.reporter.step("replaying WAL")
            log_offset = self.log_size()
            self.driver.start(ROLE, wait=False)
            self.follow_replay(the_plan, log_offset)
            self.reporter.step("verifying")
            self.verify(the_plan, log_offset)
        finally:
            self.copy_server_log(log_offset)

    def configure(self, the_plan: Plan) -> None:
        for stale in ("standby.signal", "postmaster.pid", "recovery.done"):
            (self.datadir / stale).unlink(missing_ok=True)
        self.driver.put_file(ROLE, "recovery.signal", "")
        self.driver.write_node_conf(ROLE, {
            # A plain cp: PostgreSQL runs this once per file, so it must not start Python or Django.
            "restore_command": f'cp "{self.staging}/%f" "%p"',
            **REPLAY_SETTINGS,
            **self.replay_shared_buffers(),
            **the_plan.recovery,
        })

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

    def follow_replay(self, the_plan: Plan, log_offset: int) -> None:
        """Poll replay progress until the server promotes itself (recovery_target_action=promote)."""
        start = the_plan.backup.start_lsn
        goal = the_plan.target_lsn or (the_plan.segments[-1].end_lsn if the_plan.segments else the_plan.backup.stop_lsn)
        assert start is not None and goal is not None  # the plan's backup is verified: it has its LSNs
        deadline = time.monotonic() + settings.PITR_RESTORE_TIMEOUT
        started_by = time.monotonic() + 30  # pg_ctl -W returns before postmaster.pid is written
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
                in_recovery, replay = state
                if replay is not None:
                    self.job.save_fields(replay_lsn=replay)
                    self.reporter.progress(max(0, replay - start), max(1, goal - start))
                if not in_recovery:
                    self.reporter.step("promoting")
                    return
            time.sleep(0.2)
        raise StepFailed("replaying WAL", f"not promoted after {settings.PITR_RESTORE_TIMEOUT:.0f} s")

    def probe(self) -> tuple[bool, int | None] | None:
        try:
            with self.connect(timeout=2) as conn:
                in_recovery, replay = pg.fetch_row(conn.execute(
                    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text"))
        except psycopg.OperationalError as exc:
            if login_refused(exc):  # it will never let us in: waiting PITR_RESTORE_TIMEOUT would prove nothing
                self.driver.stop(ROLE, mode="immediate")
                raise StepFailed("replaying WAL", f"the restored copy refuses pitrsite's login ({first_line(exc)}); "
                                 "the restore target was stopped") from None
            return None  # not accepting connections yet (before consistency)
        except (PitrError, psycopg.Error):
            return None
        return in_recovery, walnames.parse_lsn(replay) if replay else None

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
