"""Restore a base backup plus WAL into the restore target and promote it.

Steps: plan, find every input (the backup, each WAL file), stop the target,
empty it, extract the backup while the local WAL is hashed against the
catalog, stage the WAL range (a .partial is copied and renamed, never moved),
configure recovery, start, follow replay to promotion, then prove recovery
ended where the plan said and the server takes writes. The primary and the
archive are only read.

When the local backup directory or a planned WAL file is missing, it comes
from the archive storage (walcatalog/storage.py): the WAL downloads start
right after planning and overlap the backup's download and extraction, in
parallel (PITR_DOWNLOAD_PARALLEL), each checked against the catalog's sha256
before use; job.source says local, storage or mixed.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from django.conf import settings
from django.utils import timezone

from fleet import pg
from fleet.local import LocalDriver, get_driver
from pitrsite import procs
from pitrsite.errors import PitrError
from pitrsite.jobs import Reporter, job_key, reap, run_exclusive
from restores.models import RestoreJob, TargetKind
from restores.planner import Plan, RestoreTarget, plan
from walcatalog import walnames
from walcatalog import storage as st
from walcatalog.backups import backup_dir, extract, held_locally, storage_copies
from walcatalog.indexer import sha256_file
from walcatalog.models import BaseBackup, StorageCopy, WalSegment

ROLE = "restore_target"


class RestoreError(PitrError):
    pass


def target_of(job: RestoreJob) -> RestoreTarget:
    return RestoreTarget(kind=job.target_kind, value=job.target_value, exclusive=job.exclusive,
                         timeline=job.target_timeline, backup_id=job.requested_backup_id)


def run_restore(job: RestoreJob, reporter: Reporter) -> RestoreJob:
    """The one domain function behind `manage.py restore` and the Celery task."""
    reap(RestoreJob)
    run_exclusive(job, "restore", "restore", reporter, lambda: Restore(job, reporter).run())
    job.refresh_from_db()
    return job


class Restore:
    def __init__(self, job: RestoreJob, reporter: Reporter, driver: LocalDriver | None = None):
        self.job, self.reporter = job, reporter
        self.driver = driver or get_driver()
        self.datadir = self.driver.layout.datadir(ROLE)
        self.staging = self.driver.layout.staging / f"restore-{job.pk}"
        self.used_local = self.used_storage = 0  # files taken from each place, for job.source

    def update(self, **fields) -> None:
        for key, value in fields.items():
            setattr(self.job, key, value)
        RestoreJob.objects.filter(pk=self.job.pk).update(**fields)

    def run(self) -> None:
        self.reporter.step("planning")
        self.driver.check_port_ours(ROLE)  # a busy port must stop us before the target is touched
        refresh_catalog()
        the_plan = plan(target_of(self.job))
        self.update(backup=the_plan.backup, plan=the_plan.describe(), wal_files=len(the_plan.segments),
                    wal_first=the_plan.segments[0].file_name if the_plan.segments else "",
                    wal_last=the_plan.segments[-1].file_name if the_plan.segments else "",
                    uses_partial=the_plan.partial is not None, target_lsn=the_plan.target_lsn)
        # Every input is found before the target is touched (pgBackRest's order): the backup, each WAL file.
        backup_copies = self.backup_copies(the_plan.backup)
        wal = self.start_wal_download(the_plan)
        check = self.start_wal_check(the_plan, wal)
        try:
            self.restore(the_plan, backup_copies, wal, check)
        finally:
            check.close()
            wal.close()

    def restore(self, the_plan: Plan, backup_copies: list[StorageCopy], wal: "WalDownload",
                check: "WalCheck") -> None:
        self.reporter.step("stopping the restore target")
        self.driver.stop(ROLE, mode="immediate")  # a restore target holds nothing worth a clean shutdown
        self.reporter.step("emptying the data directory")
        empty_directory(self.datadir)
        source = self.download_backup(backup_copies) if backup_copies else backup_dir(the_plan.backup)
        self.reporter.step("extracting the backup")
        try:
            extract(source, self.datadir, self.reporter, job_key(self.job))
        finally:
            if source != backup_dir(the_plan.backup):
                shutil.rmtree(source, ignore_errors=True)
        self.reporter.step("checking WAL against the catalog")
        check.wait()
        self.job.plan = {**self.job.plan, "wal_check": check.summary()}
        self.update(plan=self.job.plan)
        self.reporter.step("staging WAL")
        self.stage(the_plan, wal, check)
        self.update(source="local" if not self.used_storage else "storage" if not self.used_local else "mixed")
        self.reporter.step("configuring recovery")
        self.configure(the_plan)
        try:
            self.reporter.step("replaying WAL")
            log_offset = self.log_size()
            self.driver.start(ROLE, wait=False)
            self.follow_replay(the_plan, log_offset)
            self.reporter.step("verifying")
            self.verify(the_plan, log_offset)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    # --- steps -----------------------------------------------------------------
    def stage(self, the_plan: Plan, wal: "WalDownload", check: "WalCheck") -> None:
        """Hard-link complete segments (instant, read-only use), copy the .partial under its final name."""
        archive = self.driver.layout.archive
        shutil.rmtree(self.staging, ignore_errors=True)
        pg.give_to_server(self.staging)
        for timeline in the_plan.history:
            name = walnames.history_name(timeline.tli)
            self.put_staged(name, timeline.history.encode())
        total, done = len(the_plan.segments), 0
        for segment in the_plan.segments:
            source = archive / segment.file_name
            dest = self.staging / segment.name
            if segment.name in wal.names:
                continue  # lost locally: downloading since planning, linked in below
            if segment.name in check.replaced:  # the local copy rotted: its verified copy from storage
                os.link(check.folder / segment.name, dest)
                self.used_storage += 1
                done += 1
                continue
            if not source.exists():
                raise RestoreError(f"failure staging WAL ({source} is missing from the local archive)")
            if segment.is_partial:
                # A snapshot of the file still being written: a torn tail just ends replay there.
                shutil.copyfile(source, dest)
                self.give(dest)
            else:
                link_or_copy(source, dest)
            self.used_local += 1
            done += 1
            self.reporter.progress(done, total)
        if wal.names:
            wal.wait(self.reporter, done, total)
            for name in sorted(wal.names):
                os.link(wal.folder / name, self.staging / name)
            self.used_storage += len(wal.names)
            self.reporter.progress(total, total)

    # --- from the archive storage, when the local copy is missing ---------------------------------
    def backup_copies(self, backup: BaseBackup) -> list[StorageCopy]:
        """[] when the local directory holds the backup, else its verified copies in storage; neither: refused."""
        if held_locally(backup):
            self.used_local += 1
            return []
        copies = storage_copies(backup, st.STORAGE_NAME)
        if not copies:
            raise RestoreError(f"failure planning ({backup.label} is missing from {backup_dir(backup)} and has no "
                               f"complete verified copy in storage {st.describe()})")
        return copies

    def download_backup(self, copies: list[StorageCopy]) -> Path:
        """The backup's files from storage into a scratch directory, checksums verified."""
        self.reporter.step("downloading the backup")
        dest = self.driver.layout.staging / f"restore-{self.job.pk}-backup"
        shutil.rmtree(dest, ignore_errors=True)
        pg.give_to_server(dest)  # tar reads it as the server account
        try:
            self.download([(c, dest / c.key.rsplit("/", 1)[1]) for c in copies], "extracting the backup",
                          by_bytes=True)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
        return dest

    def start_wal_download(self, the_plan: Plan) -> "WalDownload":
        """Start downloading the planned segments the local archive lost; refuse at once what no one holds.

        Started before the target is touched, the downloads overlap stopping it and fetching and
        extracting the backup; stage() waits for them.
        """
        archive = self.driver.layout.archive
        missing = [s for s in the_plan.segments if not (archive / s.file_name).exists()]
        partial = next((s for s in missing if s.is_partial), None)
        if partial is not None:
            raise RestoreError(f"failure planning ({archive / partial.file_name} is missing from the local archive; "
                               "a .partial is never copied to storage)")
        copies = {c.segment_id: c for c in StorageCopy.objects.filter(
            storage=st.STORAGE_NAME, segment__in=missing, verified_at__isnull=False)}
        absent = [s.name for s in missing if s.pk not in copies]
        if absent:
            span = absent[0] if len(absent) == 1 else f"{absent[0]}..{absent[-1]} ({len(absent)} segments)"
            raise RestoreError(f"failure planning ({span} missing from the local archive {archive} "
                               f"and from storage {st.describe()})")
        for segment in missing:
            if segment.sha256 and copies[segment.pk].sha256 != segment.sha256:
                raise RestoreError(f"failure planning (the copy record of {copies[segment.pk].key} disagrees "
                                   "with the catalog's sha256 of the segment)")
        folder = self.driver.layout.staging / f"restore-{self.job.pk}-wal"
        return WalDownload([(copies[s.pk], folder / s.name) for s in missing], folder)

    def start_wal_check(self, the_plan: Plan, wal: "WalDownload") -> "WalCheck":
        """Hash the planned local segments against the catalog while the backup is extracted."""
        archive = self.driver.layout.archive
        local = [s for s in the_plan.segments if not s.is_partial and s.name not in wal.names]
        good = {c.segment_id: c for c in StorageCopy.objects.filter(
            storage=st.STORAGE_NAME, segment__in=local, verified_at__isnull=False)}
        items = [(s.name, archive / s.file_name, s.sha256,
                  good[s.pk] if s.pk in good and good[s.pk].sha256 == s.sha256 else None) for s in local]
        return WalCheck(items, self.driver.layout.staging / f"restore-{self.job.pk}-checked")

    def download(self, pairs: list[tuple[StorageCopy, Path]], step: str, offset: int = 0, total: int | None = None,
                 by_bytes: bool = False) -> None:
        """Parallel downloads (PITR_DOWNLOAD_PARALLEL); the first failure fails the restore, naming the object."""
        storage = st.get_storage(st.STORAGE_NAME)
        attempts = settings.PITR_STORAGE_RETRIES

        def one(pair: tuple[StorageCopy, Path]) -> int:  # worker thread: storage and file I/O only
            copy, dest = pair
            size = st.with_retries(lambda: st.download(storage, copy.key, dest, copy.sha256, copy.size),
                                   f"download of {copy.key}", attempts=attempts,
                                   final=(st.ChecksumError, st.StorageError))
            self.give(dest)
            return size

        done = offset
        total = sum(c.size for c, _ in pairs) if by_bytes else total
        for (copy, _), size, error in st.parallel(pairs, one, settings.PITR_DOWNLOAD_PARALLEL):
            if error is not None:
                raise RestoreError(f"failure {step} ({st.error_text(error)})") from error
            self.used_storage += 1
            done += size if by_bytes else 1
            self.reporter.progress(done, total)

    def put_staged(self, name: str, data: bytes) -> None:
        path = self.staging / name
        path.write_bytes(data)
        self.give(path)

    @staticmethod
    def give(path: Path) -> None:
        account = pg.server_account()
        if account is not None:
            os.chown(path, account.pw_uid, account.pw_gid)

    def configure(self, the_plan: Plan) -> None:
        for stale in ("standby.signal", "postmaster.pid", "recovery.done"):
            (self.datadir / stale).unlink(missing_ok=True)
        self.driver.put_file(ROLE, "recovery.signal", "")
        self.driver.write_node_conf(ROLE, {
            # A plain cp: PostgreSQL runs this once per file, so it must not start Python or Django.
            "restore_command": f'cp "{self.staging}/%f" "%p"',
            **the_plan.recovery,
        })

    def log_size(self) -> int:
        path = self.driver.layout.logfile(ROLE)
        return path.stat().st_size if path.exists() else 0

    def server_fatal(self, offset: int) -> str | None:
        log = ServerLog.read(self.driver.layout.logfile(ROLE), offset)
        return log.reason() if log.fatal else None

    def follow_replay(self, the_plan: Plan, log_offset: int) -> None:
        """Poll replay progress until the server promotes itself (recovery_target_action=promote)."""
        start = the_plan.backup.start_lsn
        goal = the_plan.target_lsn or (the_plan.segments[-1].end_lsn if the_plan.segments else the_plan.backup.stop_lsn)
        deadline = time.monotonic() + settings.PITR_RESTORE_TIMEOUT
        started_by = time.monotonic() + 30  # pg_ctl -W returns before postmaster.pid is written
        while time.monotonic() < deadline:
            pid = self.driver.pid(ROLE)
            if not procs.alive(pid) and time.monotonic() < started_by and self.server_fatal(log_offset) is None:
                time.sleep(0.1)
                continue
            started_by = 0.0
            if not procs.alive(pid):
                why = self.server_fatal(log_offset) or f"the server exited: see {self.driver.layout.logfile(ROLE)}"
                raise RestoreError(f"failure replaying WAL ({why})")
            state = self.probe()
            if state is not None:
                in_recovery, replay = state
                if replay is not None:
                    self.update(replay_lsn=replay)
                    self.reporter.progress(max(0, replay - start), max(1, goal - start))
                if not in_recovery:
                    self.reporter.step("promoting")
                    return
            time.sleep(0.2)
        raise RestoreError(f"failure replaying WAL (not promoted after {settings.PITR_RESTORE_TIMEOUT:.0f} s)")

    def probe(self) -> tuple[bool, int | None] | None:
        try:
            with self.connect(timeout=2) as conn:
                in_recovery, replay = conn.execute(
                    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text").fetchone()
        except (PitrError, psycopg.Error):
            return None  # not accepting connections yet (before consistency)
        return in_recovery, walnames.parse_lsn(replay) if replay else None

    def connect(self, timeout: int = 5) -> psycopg.Connection:
        # The restore target inherits the primary's roles and passwords with the backup.
        return pg.connect(self.driver.layout.port(ROLE), dbname="postgres", timeout=timeout)

    def verify(self, the_plan: Plan, log_offset: int) -> None:
        with self.connect() as conn:
            # Only a read-write server can assign a transaction id: proves promotion, changes no data.
            conn.execute("SELECT txid_current()")
            tli = int(conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0])
        end_lsn, reason, new_tli = end_of_recovery(self.datadir / "pg_wal")
        problem = recovery_shortfall(the_plan, end_lsn, ServerLog.read(self.driver.layout.logfile(ROLE), log_offset))
        if problem:
            # A copy that stopped short must not be taken for the moment asked for.
            self.driver.stop(ROLE, mode="immediate")
            raise RestoreError(f"failure verifying ({problem}; the restore target was stopped)")
        self.driver.write_node_conf(ROLE)  # recovery is over: drop restore_command and the target
        self.update(promoted_at=timezone.now(), final_lsn=end_lsn, final_timeline=new_tli or tli,
                    plan={**self.job.plan, "stop_reason": reason})


def recovery_shortfall(the_plan: Plan, end_lsn: int | None, log: "ServerLog") -> str | None:
    """Why recovery did not reach what the plan asked for, or None when it did.

    A target (time, xid, LSN, name, immediate) must have been the reason replay stopped: PostgreSQL logs
    "recovery stopping ..." for that. The latest WAL has no target to stop at, so replay must have reached
    the end of the WAL that was staged: the partial's captured end, or past the last segment's last commit.
    """
    if end_lsn is None:
        return "the promoted server wrote no timeline history: where recovery ended is unknown"
    if the_plan.target.kind != TargetKind.LATEST:
        if log.stopped is None:
            return f"recovery ended at {walnames.format_lsn(end_lsn)} without reaching its target ({log.reason()})"
        return None
    expected, what = latest_end(the_plan)
    if end_lsn < expected:
        return (f"recovery ended at {walnames.format_lsn(end_lsn)}, before {walnames.format_lsn(expected)} "
                f"({what}): {log.reason()}")
    return None


def latest_end(the_plan: Plan) -> tuple[int, str]:
    """The least LSN a restore to the latest WAL must reach, and what it is, for messages."""
    if not the_plan.segments:
        return the_plan.backup.stop_lsn, "the end of the backup"
    last = the_plan.segments[-1]
    if last.is_partial:
        return last.scanned_to, f"the end of the WAL captured in {last.file_name}"
    if last.last_commit_lsn is not None:
        return last.last_commit_lsn + 1, f"the last commit in {last.name}"
    return last.start_lsn, f"the start of {last.name}"


# The startup process's complaints when it meets WAL it cannot read (xlogreader.c): replay ends there.
WAL_COMPLAINT = re.compile(r"^(invalid|incorrect|unexpected|record with|missing contrecord|there is no contrecord|"
                           r"could not (read|open|find)|requested WAL segment)")
# "%m [%p] %q%u@%d " (fleet/local.py): session lines carry user@db, the startup process's lines do not.
LOG_LINE = re.compile(r"^\S+ \S+ \S+ \[\d+\] (?P<session>\S*@\S* )?(?P<level>[A-Z]+):\s+(?P<text>.*)$")


@dataclass
class ServerLog:
    """What the server's own processes (not client sessions) logged since the restore started it."""

    fatal: str | None = None  # the first FATAL or PANIC of the server itself
    complaint: str | None = None  # the last line where reading WAL failed
    stopped: str | None = None  # "recovery stopping ...": a recovery target was reached
    last: str | None = None  # the last line of all

    @classmethod
    def read(cls, path: Path, offset: int) -> "ServerLog":
        found = cls()
        if not path.exists():
            return found
        with open(path, "rb") as fh:
            fh.seek(offset)
            lines = fh.read().decode(errors="replace").splitlines()
        for line in lines:
            match = LOG_LINE.match(line)
            if not match or match["session"]:
                continue  # a client's line: "the database system is starting up" is our own probe's
            text, level = match["text"].strip(), match["level"]
            found.last = text
            if level in ("FATAL", "PANIC") and found.fatal is None:
                found.fatal = text
            elif WAL_COMPLAINT.match(text):
                found.complaint = text
            elif text.startswith("recovery stopping"):
                found.stopped = text
        return found

    def reason(self) -> str:
        parts = [p for p in (self.fatal, self.complaint) if p]
        return "; ".join(parts) or self.last or "the server log says nothing more"


class WalCheck:
    """Hashes the planned local segments against the catalog's sha256 in a background thread.

    Started before the target is touched, it overlaps extraction. A segment whose bytes are not the bytes
    that were cataloged is fetched from its verified storage copy when one exists; otherwise wait() fails
    the restore naming it, before the server starts. The thread does file and storage I/O only.
    """

    def __init__(self, items: list[tuple[str, Path, str, StorageCopy | None]], folder: Path):
        self.items, self.folder = items, folder  # (name, local path, cataloged sha256, good copy or None)
        self.replaced: set[str] = set()
        self.corrupt: list[str] = []
        self.error: BaseException | None = None
        self.bytes, self.seconds = 0, 0.0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"wal-check-{folder.name}", daemon=True)
        if items:
            self.thread.start()

    def _run(self) -> None:
        began, storage = time.monotonic(), None
        try:
            for name, path, sha, copy in self.items:
                if self.stopping.is_set():
                    return
                self.bytes += path.stat().st_size
                if sha256_file(path) == sha:
                    continue
                if copy is None:
                    self.corrupt.append(name)
                    continue
                if storage is None:
                    storage = st.get_storage(st.STORAGE_NAME)
                    pg.give_to_server(self.folder)
                dest = self.folder / name
                st.with_retries(lambda: st.download(storage, copy.key, dest, copy.sha256, copy.size),
                                f"download of {copy.key}", attempts=settings.PITR_STORAGE_RETRIES,
                                final=(st.StorageError,))
                Restore.give(dest)
                self.replaced.add(name)
        except BaseException as exc:  # noqa: BLE001 - handed to the job's thread by wait()
            self.error = exc
        finally:
            self.seconds = time.monotonic() - began

    def wait(self) -> None:
        if self.thread.is_alive() or self.thread.ident is not None:
            self.thread.join()
        if self.error is not None:
            raise RestoreError(f"failure checking WAL ({st.error_text(self.error)})") from self.error
        if self.corrupt:
            span = self.corrupt[0] if len(self.corrupt) == 1 else f"{self.corrupt[0]} and {len(self.corrupt) - 1} more"
            raise RestoreError(f"failure checking WAL ({span} in the local archive is not the WAL that was "
                               f"cataloged (sha256 differs) and storage {st.describe()} holds no verified copy)")

    def summary(self) -> dict:
        return {"segments": len(self.items), "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "replaced_from_storage": sorted(self.replaced)}

    def close(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()
        shutil.rmtree(self.folder, ignore_errors=True)


class WalDownload:
    """Parallel downloads (PITR_DOWNLOAD_PARALLEL) of WAL segments in a background thread, sha256 checked.

    The thread does storage and file I/O only: the database and the reporter stay in the job's thread.
    The first failure stops it; wait() turns it into the restore's error, naming the object.
    """

    def __init__(self, pairs: list[tuple[StorageCopy, Path]], folder: Path):
        self.pairs, self.folder = pairs, folder
        self.names = {dest.name for _, dest in pairs}
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"wal-download-{folder.name}", daemon=True)
        if pairs:
            shutil.rmtree(folder, ignore_errors=True)
            pg.give_to_server(folder)
            self.thread.start()

    def _run(self) -> None:
        storage = st.get_storage(st.STORAGE_NAME)
        attempts = settings.PITR_STORAGE_RETRIES

        def one(pair: tuple[StorageCopy, Path]) -> None:
            if self.stopping.is_set():
                raise RestoreError("stopped")
            copy, dest = pair
            st.with_retries(lambda: st.download(storage, copy.key, dest, copy.sha256, copy.size),
                            f"download of {copy.key}", attempts=attempts, final=(st.StorageError,))
            Restore.give(dest)

        try:
            for _, _, error in st.parallel(self.pairs, one, settings.PITR_DOWNLOAD_PARALLEL):
                if error is not None:
                    self.error = error
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the job's thread by wait()
            self.error = exc

    def wait(self, reporter: Reporter, done: int, total: int) -> None:
        while self.thread.is_alive():
            self.thread.join(0.3)
            reporter.progress(done + sum(1 for _, dest in self.pairs if dest.exists()), total)
        if self.error is not None:
            raise RestoreError(f"failure staging WAL ({st.error_text(self.error)})") from self.error

    def close(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()
        shutil.rmtree(self.folder, ignore_errors=True)


def end_of_recovery(pg_wal: Path) -> tuple[int | None, str, int | None]:
    """The switch point PostgreSQL wrote into the new timeline's history file at promotion."""
    histories = sorted(pg_wal.glob("*.history"))
    if not histories:
        return None, "", None
    newest = histories[-1]
    entries = walnames.parse_history(newest.read_text())
    last = entries[-1]
    return last.switch_lsn, last.reason, int(newest.name.split(".")[0], 16)


def empty_directory(path: Path) -> None:
    """Remove everything inside the restore target's data directory, nothing else."""
    if path.name != "data" or path.parent.name != ROLE:
        raise RestoreError(f"refusing to empty {path}: not a restore target data directory")
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:  # another filesystem: copy instead
        shutil.copyfile(source, dest)
        Restore.give(dest)


def refresh_catalog() -> None:
    """Index what was captured up to now, so a target in the last seconds is known."""
    from walcatalog.indexer import index_archive  # imported late: the indexer imports the fleet status

    index_archive()


__all__ = ["run_restore", "RestoreError", "target_of", "WalSegment"]
