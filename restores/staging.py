"""Getting a restore's WAL in place: hashing the local copies, downloading lost or rotted ones.

Both classes run a background thread that does file and storage I/O only (the database and the reporter
stay in the job's thread), started before the restore target is touched so that they overlap extraction.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import threading
import time
from pathlib import Path

from django.conf import settings

from fleet import pg
from pitrsite.errors import StepFailed, first_line
from pitrsite.jobs import Reporter
from walcatalog import storage as st
from walcatalog.models import StorageCopy


def give(path: Path) -> None:
    """Hand a staged file to the server account, which runs restore_command."""
    account = pg.server_account()
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)


def fetch_copy(storage, copy: StorageCopy, dest: Path, content_sha256: str | None = None) -> int:
    """The one way a restore downloads: a verified storage copy to dest, retried (PITR_STORAGE_RETRIES) but for
    storage errors another attempt cannot mend, sha256 and size checked (a compressed WAL object's bytes also
    against content_sha256, the catalog's), handed to the server account."""
    size = st.with_retries(functools.partial(st.download, storage, copy.key, dest, copy.sha256, copy.size,
                                             content_sha256),
                           f"download of {copy.key}", attempts=settings.PITR_STORAGE_RETRIES, final=(st.StorageError,))
    give(dest)
    return size


def can_hold(copy: StorageCopy, sha256: str) -> bool:
    """May this copy hold the segment the catalog hashed as sha256? A plain object's record says so; a
    compressed one's bytes are held to it as they are decompressed (fetch_copy)."""
    return st.wal_compressed(copy.key) or copy.sha256 == sha256


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
                if st.sha256_file(path)[1] == sha:
                    continue
                if copy is None:
                    self.corrupt.append(name)
                    continue
                if storage is None:
                    storage = st.get_storage(st.STORAGE_NAME)
                    pg.give_to_server(self.folder)
                fetch_copy(storage, copy, self.folder / name, sha)
                self.replaced.add(name)
        except BaseException as exc:  # noqa: BLE001 - handed to the job's thread by wait()
            self.error = exc
        finally:
            self.seconds = time.monotonic() - began

    def wait(self) -> None:
        if self.thread.is_alive() or self.thread.ident is not None:
            self.thread.join()
        if self.error is not None:
            raise StepFailed("checking WAL", first_line(self.error)) from self.error
        if self.corrupt:
            span = self.corrupt[0] if len(self.corrupt) == 1 else f"{self.corrupt[0]} and {len(self.corrupt) - 1} more"
            raise StepFailed("checking WAL", f"{span} in the local archive is not the WAL that was "
                               f"cataloged (sha256 differs) and storage {st.describe()} holds no verified copy")

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
    The first failure stops it; wait() turns it into the restore's error, naming the object. A .partial
    snapshot (named in `pad`, with its segment size) is its valid prefix: once checked, it is extended with
    zeros to the segment size, which PostgreSQL requires of a restored file and reads as the end of WAL.
    """

    def __init__(self, pairs: list[tuple[StorageCopy, Path, str]], folder: Path, pad: dict[str, int] | None = None):
        self.pairs, self.folder, self.pad = pairs, folder, pad or {}  # (copy, where, the catalog's sha256 or "")
        self.names = {dest.name for _, dest, _ in pairs}
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"wal-download-{folder.name}", daemon=True)
        if pairs:
            shutil.rmtree(folder, ignore_errors=True)
            pg.give_to_server(folder)
            self.thread.start()

    def _run(self) -> None:
        storage = st.get_storage(st.STORAGE_NAME)

        def one(pair: tuple[StorageCopy, Path, str]) -> None:
            if self.stopping.is_set():
                raise StepFailed("staging WAL", "stopped")
            copy, dest, sha = pair
            fetch_copy(storage, copy, dest, sha or None)
            if dest.name in self.pad:
                os.truncate(dest, self.pad[dest.name])  # the owner stays: give() came first

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
            reporter.progress(done + sum(1 for _, dest, _ in self.pairs if dest.exists()), total)
        if self.error is not None:
            raise StepFailed("staging WAL", first_line(self.error)) from self.error

    def close(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join()
        shutil.rmtree(self.folder, ignore_errors=True)


_libc = ctypes.CDLL("libc.so.6", use_errno=True)
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(path: str) -> None:
    """sync_file_range(SYNC_FILE_RANGE_WRITE): start the file's writeback, do not wait for it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _libc.sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), SYNC_FILE_RANGE_WRITE)
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """fsync every file and directory of a data directory, its pg_wal and tablespaces (symlinks) included.

    What PostgreSQL's start-up SyncDataDirectory does, which it skips with fsync=off (restores/recovery.py):
    first start every file's writeback, so the disk takes them all at once, then wait for each. A file gone
    meanwhile is skipped, as PostgreSQL skips it.
    """
    files: list[str] = []
    folders: list[str] = []
    for folder, _dirs, names in os.walk(root, followlinks=True):
        folders.append(folder)
        files.extend(os.path.join(folder, name) for name in names)
    for path in files:
        with contextlib.suppress(FileNotFoundError):
            start_writeback(path)
    for path in files + folders:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Writeback:
    """Starts the kernel's writeback of every file tar has written so far, every 0.2 s, in a thread.

    The extracted files must be on disk before the copy is promoted: PostgreSQL fsyncs the whole data
    directory when it starts recovery from a backup, or pitrsite does (sync_tree) when replay runs with
    fsync=off. Asking for the writeback while tar still extracts (start it, do not wait) overlaps the disk
    with decompression and replay, so that fsync finds little left to do. It only starts I/O.
    """

    def __init__(self, root: Path, interval: float = 0.2):
        self.root, self.interval = root, interval
        self.flushed: dict[str, int] = {}  # path -> size when its writeback was last started
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"writeback-{root.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.flush()

    def flush(self) -> None:
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                path = os.path.join(folder, name)
                try:
                    size = os.stat(path).st_size
                    if size == self.flushed.get(path):
                        continue
                    start_writeback(path)
                except OSError:
                    continue  # gone or not ours to open: the fsync before promotion covers it
                self.flushed[path] = size

    def close(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.flush()  # the last files too: PostgreSQL's fsync then mostly waits for I/O already under way


def link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:  # another filesystem: copy instead
        shutil.copyfile(source, dest)
        give(dest)
