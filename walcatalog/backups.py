"""Base backups: pg_basebackup in tar format, verified in the same pass (walcatalog/verify.py).

One domain function (run_backup) behind both `manage.py backup` and the Celery
task. A backup is offered for restore only once its manifest is verified.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from django.conf import settings
from django.utils import timezone

from fleet import pg, servers
from fleet.layout import Layout
from fleet.driver import get_driver
from pitrsite import locks, runner
from pitrsite.errors import BackupError, StepFailed
from pitrsite.jobs import JobState, Reporter, job_key, reap, run_exclusive
from walcatalog import catalog, server_policy, verify, walnames
from walcatalog import storage as st
from walcatalog.models import BaseBackup, Compression, StorageCopy

# pg_basebackup --progress prints "12345/67890 kB (18%), 0/1 tablespace" lines.
PROGRESS = re.compile(r"(\d+)/(\d+) kB")
TAR_CHECKPOINT = re.compile(r"tar: (\d+)$")
SUFFIX = {Compression.NONE: "", Compression.GZIP: ".gz", Compression.LZ4: ".lz4", Compression.ZSTD: ".zst"}
TABLESPACE_TAR = re.compile(r"^\d+\.tar(\.gz|\.lz4|\.zst)?$")
TAR_FILTER = {".tar": [], ".gz": ["--gzip"], ".zst": ["--zstd"], ".lz4": ["--use-compress-program=lz4"]}
# What pg_basebackup --verbose says once files are closed (BaseBackup() in pg_basebackup.c, 13 to 17): the WAL
# end point once every archive and backup_manifest.tmp are written; "syncing data to disk" once its WAL
# streamer, which closes pg_wal.tar, has exited. Then it fsyncs everything and renames the manifest: the
# check runs during that fsync instead of after it. A version that says neither is checked after its exit.
ARCHIVES_WRITTEN = "write-ahead log end point"
WAL_WRITTEN = "syncing data to disk"


def queue_backup(compression: str | None = None, trigger: str = "command") -> BaseBackup:
    """Create the job row; run_backup (here or in a worker) does the work. No compression: the server's own."""
    compression = compression or server_policy.compression()
    if compression not in Compression.values:
        raise BackupError(f"unknown compression {compression!r}: choose one of {', '.join(Compression.values)}")
    servers.current().refuse_if_retired("backups")
    servers.lock(locks.BACKUP).refuse_if_held()
    stamp = timezone.now().strftime("%Y%m%dT%H%M%S%fZ")
    return BaseBackup.objects.create(label=f"pitr_{stamp}", compression=compression, trigger=trigger)


def run_backup(backup: BaseBackup, reporter: Reporter) -> BaseBackup:
    """Take the backup the row describes; one at a time per data home."""
    reap(BaseBackup)  # a backup whose worker was killed must not block this one
    return run_exclusive(backup, servers.lock(locks.BACKUP), reporter, lambda: _take(backup, reporter))


def clean_killed_backup(backup: BaseBackup) -> None:
    """After the reaper killed a dead backup's tools: its half-written directory and scratch copy go.

    pg_basebackup's temporary slot belongs to its WAL streamer's connection, so it
    is dropped by the primary when that process is killed with the job's group.
    """
    if backup.manifest_verified:
        return  # never delete what was verified
    for path in (backup_dir(backup), Layout.current().staging / f"verify-{backup.label}"):
        shutil.rmtree(path, ignore_errors=True)


def check_room(layout: Layout, compression: str, driver=None) -> None:
    """Refuse a backup that cannot fit, before pg_basebackup fills the disk capture also writes to.

    The estimate is the primary's database size: the archives hold that much uncompressed (half, as a
    conservative guess, when compressed). Verification reads the archives as they are written and unpacks
    only the backup's WAL, so it needs no room of its own worth counting.
    """
    with (driver or get_driver()).connect("primary", dbname="postgres", timeout=5) as conn:
        size = int(pg.fetch_row(conn.execute("SELECT sum(pg_database_size(oid)) FROM pg_database"))[0])
    amount = size if compression == Compression.NONE else size // 2
    free = shutil.disk_usage(layout.backups).free
    if free < amount:
        # Its own step in the message: the check runs beside pg_basebackup's start, not in the copy.
        raise StepFailed("checking free space", f"the backup needs about {amount / 2**20:,.0f} MiB in "
                         f"{layout.backups} (a {size / 2**20:,.0f} MiB database), {free / 2**20:,.0f} MiB free")


def backup_dir(backup: BaseBackup) -> Path:
    return Layout.current().backups / backup.label


def _take(backup: BaseBackup, reporter: Reporter) -> None:
    layout = Layout.current()
    dest = backup_dir(backup)
    if dest.exists():
        raise StepFailed("preparing", f"{dest} already exists")
    pg.give_to_server(layout.backups)
    BaseBackup.objects.filter(pk=backup.pk).update(path=str(dest), start_time=timezone.now())

    reporter.step("copying files (pg_basebackup)")
    compress = [] if backup.compression == Compression.NONE else [f"--compress=client-{backup.compression}"]
    c = servers.conn()
    argv = [pg.tool("pg_basebackup"), "-h", c.host, "-p", str(c.port), "-U", c.replication_user, "--no-password",
            "-D", str(dest), "--format=tar", "--wal-method=stream",
            "--checkpoint=fast", "--progress", "--verbose", f"--label={backup.label}", *compress,
            "--manifest-checksums=CRC32C",  # what verify.compare checks (also PostgreSQL's default)
            *([f"--max-rate={settings.PITR_BACKUP_MAX_RATE}"] if settings.PITR_BACKUP_MAX_RATE else [])]
    owner = job_key(backup)
    driver = get_driver()  # resolved here: the free-space check runs in a thread, outside servers.using()

    def room() -> None:
        """The free-space check, alongside pg_basebackup's connection and checkpoint (0.01 s of a backup);
        pg_basebackup is stopped when it fails, before it has written much."""
        try:
            check_room(layout, backup.compression, driver)
        except BaseException:
            runner.kill_children(owner)
            raise

    base = dest / f"base.tar{SUFFIX[Compression(backup.compression)]}"
    written = threading.Event()
    check = verify.ArchiveCheck(base, written.is_set, owner)  # reads base.tar while it is written

    def archives_written() -> None:
        written.set()
        check.writer_finished()  # the verifier gets its CPU priority back

    step = "verifying (manifest checksums, pg_waldump)"
    with ThreadPoolExecutor(2) as pool:
        fits = pool.submit(room)
        early: list[Future] = []  # the check, begun while pg_basebackup syncs
        said = {ARCHIVES_WRITTEN: archives_written,
                WAL_WRITTEN: lambda: early.append(pool.submit(_verify, backup, dest, check, owner, step))}
        try:
            _run_with_progress(argv, reporter, owner, said, servers.libpq_env(c))
        except BaseException:
            check.cancel()
            raise
        finally:
            archives_written()
            _room_first(fits, dest)  # raised here, a refusal replaces what pg_basebackup (stopped for it) said
        stop_time = timezone.now()
        reporter.step(step)
        hashes, manifest = early[0].result() if early else _verify(backup, dest, check, owner, step)
    _same_manifest(dest / "backup_manifest", hashes["backup_manifest"]["sha256"], step)
    wal_range = manifest["WAL-Ranges"][0]
    files = [p for p in dest.iterdir() if p.is_file()]
    BaseBackup.objects.filter(pk=backup.pk).update(
        file_hashes=hashes,  # what the scrub holds the files to from now on
        timeline=wal_range["Timeline"],
        start_lsn=walnames.parse_lsn(wal_range["Start-LSN"]),
        stop_lsn=walnames.parse_lsn(wal_range["End-LSN"]),
        stop_time=stop_time,
        size_raw=sum(f["Size"] for f in manifest["Files"]),
        size_stored=sum(p.stat().st_size for p in files),
        segment_size=catalog.segment_size(),
        manifest_verified=True,
    )
    backup.refresh_from_db()


def _room_first(fits: Future, dest: Path) -> None:
    """A failed free-space check is the backup's failure; what pg_basebackup wrote goes."""
    try:
        fits.result()
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _run_with_progress(argv: list[str], reporter: Reporter, owner: str, said: dict[str, Callable[[], None]],
                       libpq_env: dict) -> None:
    """pg_basebackup, its progress lines into the job's progress and every other line into its log;
    said[words]() is called when a line holding those words comes."""
    def progress(line: str) -> bool:
        match = PROGRESS.search(line)
        if match:
            reporter.progress(int(match.group(1)) * 1024, int(match.group(2)) * 1024)
            return True
        reporter.log(line.strip())  # the job's own log
        for words, then in said.items():
            if words in line:
                then()
        return False

    result = pg.run(argv, step="copying files", env=libpq_env, timeout=None, check=False, owner=owner,
                    on_line=progress)
    if result.returncode != 0:
        raise StepFailed("copying files", runner.error_line(result.stderr).removeprefix("pg_basebackup: "))


def _verify(backup: BaseBackup, dest: Path, check: verify.ArchiveCheck, owner: str, step: str) -> tuple[dict, dict]:
    """The manifest against every archive's members, and its WAL range through pg_waldump.

    base.tar was read while it was written; tablespace archives (rare) are read now, from the page cache.
    The WAL check, and the hashing of pg_wal.tar, run alongside the end of base.tar's check.
    Returns the files' sizes and SHA-256 (recorded for the scrub) and the manifest.
    """
    archives = [p for p in sorted(dest.iterdir()) if p == check.path or TABLESPACE_TAR.match(p.name)]
    try:
        data = _read_manifest_file(dest)
        manifest = verify.read_manifest(dest / "backup_manifest", data)
    except (OSError, verify.VerifyError) as exc:
        check.cancel()
        raise StepFailed(step, str(exc)) from None
    hashes = {"backup_manifest": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    scratch = Layout.current().staging / f"verify-{backup.label}"
    with ThreadPoolExecutor(2) as pool:  # hashlib, tar and pg_waldump let go of the GIL
        others = {p.name: pool.submit(st.sha256_file, p) for p in sorted(dest.iterdir())
                  if p.is_file() and p not in archives and not p.name.startswith("backup_manifest")}
        wal = pool.submit(_wal_check, dest, manifest, scratch, step)
        try:
            found = check.result()
            hashes[check.path.name] = {"size": check.follower.size, "sha256": check.follower.sha256.hexdigest()}
            for archive in archives:
                if archive == check.path:
                    continue
                oid = archive.name.split(".")[0]  # a tablespace's archive is OID.tar[.suffix]
                other = verify.ArchiveCheck(archive, lambda: True, owner, prefix=f"pg_tblspc/{oid}/")
                found.update(other.result())
                hashes[archive.name] = {"size": other.follower.size, "sha256": other.follower.sha256.hexdigest()}
            verify.compare(manifest, found)
        except verify.VerifyError as exc:
            raise StepFailed(step, str(exc)) from None
        wal.result()
        for name, future in others.items():
            size, sha = future.result()
            hashes[name] = {"size": size, "sha256": sha}
    return hashes, manifest


def _read_manifest_file(dest: Path) -> bytes:
    """The manifest's bytes: backup_manifest.tmp while pg_basebackup syncs, backup_manifest once renamed."""
    for name in ("backup_manifest.tmp", "backup_manifest"):
        try:
            return (dest / name).read_bytes()
        except FileNotFoundError:
            continue
    raise verify.VerifyError(f"{dest} holds no backup_manifest")


def _same_manifest(path: Path, sha256: str, step: str) -> None:
    """The manifest pg_basebackup left (renamed once synced) holds the bytes that were verified."""
    try:
        _, now = st.sha256_file(path)
    except OSError as exc:
        raise StepFailed(step, f"{path.name}: {exc.strerror}") from None
    if now != sha256:
        raise StepFailed(step, f"{path.name} changed after it was verified")


def _wal_check(dest: Path, manifest: dict, scratch: Path, step: str) -> None:
    """pg_wal.tar unpacked into scratch (a few segments), the manifest's WAL range parsed there by pg_waldump."""
    shutil.rmtree(scratch, ignore_errors=True)
    pg.give_to_server(scratch)
    try:
        wal = archive_file(dest, "pg_wal")
        try:
            ends = {r["Timeline"]: walnames.parse_lsn(r["End-LSN"]) for r in manifest["WAL-Ranges"]}
            unpacked = verify.unpack_wal(wal, scratch, ends)
        except (verify.VerifyError, OSError) as exc:
            raise StepFailed(step, f"{wal.name}: {exc}") from None
        if not unpacked:
            pg.run(["tar", "--extract", f"--file={wal}", f"--directory={scratch}", *TAR_FILTER[wal.suffix]],
                   step=step, timeout=None)
        verify.wal_check(pg.tool("pg_waldump"), manifest, scratch, lambda argv: pg.run(argv, step=step, timeout=None))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def archive_file(dest: Path, stem: str) -> Path:
    """base.tar / pg_wal.tar with whatever compression suffix pg_basebackup gave it."""
    for suffix in ("", ".gz", ".lz4", ".zst"):
        path = dest / f"{stem}.tar{suffix}"
        if path.exists():
            return path
    raise StepFailed("extracting", f"{stem}.tar is missing from {dest}")


def extract_stream(reader, suffix: str, into: Path, owner: str, progress: Callable[[int], None]) -> tuple[int, str]:
    """GNU tar (as the server account) extracts an archive as it is read from `reader`, a storage stream;
    returns the bytes read and their sha256, for the caller to hold against the copy's record."""
    pg.give_to_server(into)
    proc = runner.popen(["tar", "--extract", "--file=-", f"--directory={into}", *TAR_FILTER[suffix]],
                        as_server=True, owner=owner, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=False)
    assert proc.stdin is not None and proc.stderr is not None  # both PIPE
    errors: list[bytes] = []
    drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    drain.start()
    digest, size = hashlib.sha256(), 0
    try:
        with contextlib.closing(reader):
            while chunk := reader.read(verify.CHUNK):
                digest.update(chunk)
                size += len(chunk)
                proc.stdin.write(chunk)
                progress(size)
        proc.stdin.close()
    except BaseException:
        proc.kill()
        raise
    finally:
        returncode = proc.wait()
        drain.join()
    if returncode != 0:
        why = runner.error_line(b"".join(errors).decode(errors="replace"))
        raise StepFailed("extracting the backup", f"tar: {why}")
    return size, digest.hexdigest()


def extract(dest: Path, datadir: Path, reporter: Reporter, owner: str, tablespaces: Path | None = None,
            base_done: bool = False) -> None:
    """Unpack base.tar into datadir, pg_wal.tar into datadir/pg_wal and each OID.tar (a tablespace) too,
    as the server account.

    A tablespace goes under `tablespaces`/OID, and tablespace_map is rewritten to point there, so the copy
    never writes to the original's tablespace path (PostgreSQL makes pg_tblspc's links from the map). Without
    `tablespaces` (verification), it goes into pg_tblspc/OID itself, where pg_verifybackup looks.
    GNU tar does the work (it picks gzip/lz4/zstd from the suffix); its checkpoints every 1 MiB give the progress.
    `base_done`: base.tar was extracted already, as it downloaded (extract_stream).
    """
    wal = archive_file(dest, "pg_wal")
    spaces = sorted(p for p in dest.iterdir() if TABLESPACE_TAR.match(p.name))
    total = _raw_size(dest) or None
    done = 0
    targets = [(wal, datadir / "pg_wal")] if base_done else [(archive_file(dest, "base"), datadir),
                                                             (wal, datadir / "pg_wal")]
    for archive in spaces:
        oid = archive.name.split(".", 1)[0]
        targets.append((archive, tablespaces / oid if tablespaces else datadir / "pg_tblspc" / oid))
    for archive, into in targets:
        pg.give_to_server(into)
        argv = ["tar", "--extract", f"--file={archive}", f"--directory={into}", *TAR_FILTER[archive.suffix],
                "--checkpoint=100", "--checkpoint-action=echo=%u"]
        done = _tar(argv, reporter, done, total, owner)
    tsmap = datadir / "tablespace_map"
    if tablespaces and spaces and tsmap.exists():
        lines = [f"{oid} {tablespaces / oid}" for oid in (line.split(" ", 1)[0]
                                                          for line in tsmap.read_text().splitlines() if line)]
        tsmap.write_text("\n".join(lines) + "\n")  # extracted by the server account: it keeps the owner


def _tar(argv: list[str], reporter: Reporter, done: int, total: int | None, owner: str) -> int:
    start = done

    def progress(line: str) -> bool:
        nonlocal done
        match = TAR_CHECKPOINT.match(line)
        if match:  # records read so far, 10240 bytes each
            done = start + int(match.group(1)) * 10240
            reporter.progress(min(done, total) if total else done, total)
        else:
            reporter.log(f"tar: {line.strip()}")
        return match is not None

    pg.run(argv, step="extracting", timeout=None, owner=owner, on_line=progress)
    return done


def _raw_size(dest: Path) -> int:
    try:
        return sum(f["Size"] for f in json.loads((dest / "backup_manifest").read_text())["Files"])
    except (OSError, KeyError, ValueError):
        return 0


def restorable_backups():
    """Verified, finished backups, newest end first."""
    return BaseBackup.objects.filter(state=JobState.DONE, manifest_verified=True).order_by("-stop_lsn")


def held_locally(backup: BaseBackup) -> bool:
    """Its directory still holds the archives and the manifest a restore extracts, and they have not rotted."""
    if backup.corrupt_at is not None:
        return False
    local = backup_dir(backup)
    try:
        archive_file(local, "base"), archive_file(local, "pg_wal")
    except StepFailed:  # "failure extracting (base.tar is missing ...)"
        return False
    return (local / "backup_manifest").is_file()


def storage_copies(backup: BaseBackup, storage: str) -> list[StorageCopy]:
    """Its verified file copies in storage, or [] unless the descriptor (written last) is verified too."""
    copies = list(StorageCopy.verified(storage).filter(backup=backup, kind=StorageCopy.Kind.BACKUP))
    complete = StorageCopy.verified(storage).filter(key=st.descriptor_key(backup.label)).exists()
    return copies if complete else []
