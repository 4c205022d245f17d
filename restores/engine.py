"""Restore a base backup plus WAL into the restore target and promote it.

Steps: plan, find every input (the backup, each WAL file), stop the target,
empty it, extract the backup while the local WAL is hashed against the
catalog, stage the WAL range (a .partial is copied and renamed, never moved),
then hand over to restores/recovery.py: configure recovery, start, follow
replay to promotion, prove recovery ended where the plan said and the server
takes writes. The primary and the archive are only read.

When the local backup directory or a planned WAL file is missing, it comes
from the archive storage (walcatalog/storage.py): the WAL downloads start
right after planning and overlap the backup's download and extraction, in
parallel (PITR_DOWNLOAD_PARALLEL), each checked against the catalog's sha256
before use; job.source says local, storage or mixed. A .partial lost with the local archive comes from its
newest storage snapshot (the plan's partial_snapshot), padded to the segment size under the complete name.
"""
from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fleet import pg, servers
from fleet.driver import FleetDriver, get_driver
from fleet.layout import Layout
from pitrsite import locks
from pitrsite.errors import PitrError, RestoreError, StepFailed, first_line
from pitrsite.jobs import Reporter, job_key, reap, run_exclusive
from restores.models import RestoreJob
from restores.planner import Plan, RestoreTarget, plan
from restores.recovery import ROLE, Recovery
from restores.staging import WalCheck, WalDownload, Writeback, can_hold, fetch_copy, give, link_or_copy
from walcatalog import storage as st
from walcatalog import walnames
from walcatalog.backups import backup_dir, extract, extract_stream, held_locally, storage_copies
from walcatalog.models import BaseBackup, StorageCopy, WalSegment


def target_of(job: RestoreJob) -> RestoreTarget:
    return RestoreTarget(kind=job.target_kind, value=job.target_value, exclusive=job.exclusive,
                         timeline=job.target_timeline, backup_id=job.requested_backup_id)


def run_restore(job: RestoreJob, reporter: Reporter) -> RestoreJob:
    """The one domain function behind `manage.py restore` and the Celery task."""
    reap(RestoreJob)
    run_exclusive(job, servers.lock(locks.RESTORE), reporter, lambda: Restore(job, reporter).run())
    job.refresh_from_db()
    return job


def local_wal(archive: Path, segment: WalSegment) -> Path | None:
    """The archive's file for a planned segment. A planned .partial that pg_receivewal has completed and
    renamed since is read from the complete segment: it begins with the same bytes."""
    for name in (segment.file_name, segment.name) if segment.is_partial else (segment.file_name,):
        if (archive / name).exists():
            return archive / name
    return None


class Restore:
    def __init__(self, job: RestoreJob, reporter: Reporter, driver: FleetDriver | None = None):
        self.job, self.reporter = job, reporter
        self.driver = driver or get_driver()
        self.datadir = self.driver.layout.datadir(ROLE)
        self.tablespaces = self.datadir.parent / "tablespaces"  # the copy's own, never the original's paths
        self.staging = self.driver.layout.staging / f"restore-{job.pk}"
        self.used_local = self.used_storage = 0  # files taken from each place, for job.source

    def run(self) -> None:
        self.reporter.step("planning")
        self.driver.prepare_restore_target()
        self.driver.check_port_ours(ROLE)  # a busy port must stop us before the target is touched
        refresh_catalog()  # the first WAL indexed names the server's major version
        check_binaries(self.driver)
        the_plan = plan(target_of(self.job))
        self.job.save_fields(backup=the_plan.backup, plan=the_plan.describe(), wal_files=len(the_plan.segments),
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

    def restore(self, the_plan: Plan, backup_copies: list[StorageCopy], wal: WalDownload,
                check: WalCheck) -> None:
        self.reporter.step("stopping the restore target")
        self.driver.stop(ROLE, mode="immediate")  # a restore target holds nothing worth a clean shutdown
        self.reporter.step("emptying the data directory")
        empty_directory(self.datadir)
        shutil.rmtree(self.tablespaces, ignore_errors=True)
        pg.give_to_server(self.tablespaces)
        base = next((c for c in backup_copies if c.key.rsplit("/", 1)[1].startswith("base.tar")), None)
        source = self.scratch() if backup_copies else backup_dir(the_plan.backup)
        self.reporter.step("extracting the backup")
        writeback = Writeback(self.datadir)  # to disk while tar extracts, not in PostgreSQL's start-up fsync
        try:
            # The backup's other files (pg_wal.tar, the manifest, tablespaces) download alongside base.tar's stream.
            with ThreadPoolExecutor(1, thread_name_prefix="backup-files") as pool:
                others = pool.submit(self.download_backup, [c for c in backup_copies if c is not base], source)
                streamed = base is not None and self.stream_base(base)
                self.used_storage += others.result()
            if base is not None and not streamed:
                self.used_storage += self.download_backup([base], source)
            extract(source, self.datadir, self.reporter, job_key(self.job), tablespaces=self.tablespaces,
                    base_done=streamed)
        finally:
            writeback.close()
            if source != backup_dir(the_plan.backup):
                shutil.rmtree(source, ignore_errors=True)
        self.reporter.step("checking WAL against the catalog")
        check.wait()
        self.job.save_fields(plan={**self.job.plan, "wal_check": check.summary()})
        self.reporter.step("staging WAL")
        self.stage(the_plan, wal, check)
        self.job.save_fields(source="local" if not self.used_storage else "storage" if not self.used_local else "mixed")
        try:  # configure, start, follow replay, verify: restores/recovery.py
            Recovery(self.job, self.reporter, self.driver, self.staging).run(the_plan)
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
        if self.job.as_new_primary:
            self.reporter.step("becoming a new primary")
            from restores.promote import become_new_primary  # promote imports fleet.promoted, only needed here

            server = become_new_primary(self.job, self.driver)
            self.job.save_fields(plan={**self.job.plan, "new_primary": server.name})

    # --- steps -----------------------------------------------------------------
    def stage(self, the_plan: Plan, wal: WalDownload, check: WalCheck) -> None:
        """Hard-link complete segments (instant, read-only use), copy the .partial under its final name."""
        archive = self.driver.layout.archive
        shutil.rmtree(self.staging, ignore_errors=True)
        pg.give_to_server(self.staging)
        for timeline in the_plan.history:
            name = walnames.history_name(timeline.tli)
            self.put_staged(name, timeline.history.encode())
        total, done = len(the_plan.segments), 0
        for segment in the_plan.segments:
            source = local_wal(archive, segment)
            dest = self.staging / segment.name
            if segment.name in wal.names:
                continue  # lost locally: downloading since planning, linked in below
            if segment.name in check.replaced:  # the local copy rotted: its verified copy from storage
                os.link(check.folder / segment.name, dest)
                self.used_storage += 1
                done += 1
                continue
            if source is None:
                raise StepFailed("staging WAL", f"{archive / segment.file_name} is missing from the local archive")
            if source.name.endswith(".partial"):
                # A snapshot of the file still being written: a torn tail just ends replay there.
                shutil.copyfile(source, dest)
                give(dest)
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
            raise StepFailed("planning", f"{backup.label} is missing from {backup_dir(backup)} and has no "
                               f"complete verified copy in storage {st.describe()}")
        return copies

    def scratch(self) -> Path:
        """Where the backup's files from storage go (base.tar only when streaming it failed)."""
        dest = self.driver.layout.staging / f"restore-{self.job.pk}-backup"
        shutil.rmtree(dest, ignore_errors=True)
        pg.give_to_server(dest)  # tar reads it as the server account
        return dest

    def download_backup(self, copies: list[StorageCopy], dest: Path) -> int:
        """Backup files into dest, checksums verified, one after the other (they are few; each thread makes
        its own storage client). No database use, so it may run in a thread; returns how many."""
        storage = st.get_storage(st.STORAGE_NAME)
        for copy in copies:
            try:
                fetch_copy(storage, copy, dest / copy.key.rsplit("/", 1)[1])
            except Exception as exc:
                raise StepFailed("extracting the backup", first_line(exc)) from exc
        return len(copies)

    def stream_base(self, copy: StorageCopy) -> bool:
        """base.tar extracted as it downloads: no scratch copy, no wait for the whole object before tar starts.

        The bytes are held to the copy's sha256 and size at the end; on any failure (the stream, tar, or a
        mismatch) the data directory is emptied again and False says to download it, with retries and the
        checksum checked before use, then extract it from the file.
        """
        storage = st.get_storage(st.STORAGE_NAME)
        try:
            size, sha = extract_stream(st.stream(storage, copy.key), Path(copy.key).suffix, self.datadir,
                                       job_key(self.job), lambda done: self.reporter.progress(done, copy.size))
            if (size, sha) == (copy.size, copy.sha256):
                self.used_storage += 1
                return True
            why = f"sha256 {sha[:16]}... ({size} bytes), expected {copy.sha256[:16]}... ({copy.size} bytes)"
        except (PitrError, OSError) as exc:
            why = first_line(exc)
        except Exception as exc:  # a storage client's own error: the download below retries or names it
            why = first_line(st.as_storage_error(exc))
        self.reporter.log(f"streaming {copy.key} failed ({why}): downloading it instead")
        empty_directory(self.datadir)
        return False

    def start_wal_download(self, the_plan: Plan) -> WalDownload:
        """Start downloading the planned segments the local archive lost; refuse at once what no one holds.

        Started before the target is touched, the downloads overlap stopping it and fetching and
        extracting the backup; stage() waits for them.
        """
        archive = self.driver.layout.archive
        missing = [s for s in the_plan.segments if local_wal(archive, s) is None]
        partial = next((s for s in missing if s.is_partial), None)
        snapshot = the_plan.snapshot
        if partial is not None and (snapshot is None or snapshot.segment_id != partial.pk):
            raise StepFailed("planning", f"{archive / partial.file_name} is missing from the local archive and "
                               f"storage {st.describe()} holds no snapshot of it")
        copies = {c.segment_id: c for c in StorageCopy.objects.filter(
            storage=st.identity(), segment__in=missing, verified_at__isnull=False, kind=StorageCopy.Kind.WAL)}
        if partial is not None and snapshot is not None:
            copies[partial.pk] = snapshot  # downloaded under the complete name, padded: as the .partial is copied
        absent = [s.name for s in missing if s.pk not in copies]
        if absent:
            span = absent[0] if len(absent) == 1 else f"{absent[0]}..{absent[-1]} ({len(absent)} segments)"
            raise StepFailed("planning", f"{span} missing from the local archive {archive} "
                               f"and from storage {st.describe()}")
        for segment in missing:
            if segment.sha256 and not can_hold(copies[segment.pk], segment.sha256):
                raise StepFailed("planning", f"the copy record of {copies[segment.pk].key} disagrees "
                                   "with the catalog's sha256 of the segment")
        folder = self.driver.layout.staging / f"restore-{self.job.pk}-wal"
        pad = {partial.name: partial.end_lsn - partial.start_lsn} if partial is not None else {}
        # A snapshot's bytes are a prefix, not the segment the catalog hashed: its copy's own check holds it.
        return WalDownload([(copies[s.pk], folder / s.name, "" if s.is_partial else s.sha256) for s in missing],
                           folder, pad)

    def start_wal_check(self, the_plan: Plan, wal: WalDownload) -> WalCheck:
        """Hash the planned local segments against the catalog while the backup is extracted."""
        archive = self.driver.layout.archive
        local = [s for s in the_plan.segments if not s.is_partial and s.name not in wal.names]
        good = {c.segment_id: c for c in StorageCopy.objects.filter(
            storage=st.identity(), segment__in=local, verified_at__isnull=False, kind=StorageCopy.Kind.WAL)}
        items = [(s.name, archive / s.file_name, s.sha256,
                  good[s.pk] if s.pk in good and can_hold(good[s.pk], s.sha256) else None) for s in local]
        return WalCheck(items, self.driver.layout.staging / f"restore-{self.job.pk}-checked")

    def put_staged(self, name: str, data: bytes) -> None:
        path = self.staging / name
        path.write_bytes(data)
        give(path)


def empty_directory(path: Path) -> None:
    """Remove everything inside the restore target's data directory, nothing else."""
    if path.name != "data" or path.parent.name != ROLE:
        raise RestoreError(f"refusing to empty {path}: not a restore target data directory")
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def check_binaries(driver: FleetDriver) -> None:
    """The restore target runs the backup's data directory with the local binaries: a major version of its own
    would refuse the directory after it was emptied, so a different one is refused first, in one line."""
    from fleet.checks import local_major

    server = servers.current()
    if driver.name == "docker" or not server.pg_major:  # a container brings its own binaries; no WAL yet
        return
    local = local_major()
    if server.pg_major != local:
        raise RestoreError(f"server {server.name} is PostgreSQL {server.pg_major}, the local binaries of its restore "
                           f"target are PostgreSQL {local} in {pg.bindir()}): install PostgreSQL "
                           f"{server.pg_major} here and set PITR_PG_BINDIR to its bin directory")


def refresh_catalog() -> None:
    """Index what was captured up to now, so a target in the last seconds is known."""
    from walcatalog.indexer import index_archive  # imported late: the indexer imports the fleet status

    if Layout.current().archive.is_dir():  # a restore-only home has no archive: storage holds the WAL
        index_archive()


__all__ = ["run_restore", "RestoreError", "target_of", "WalSegment", "ROLE"]
