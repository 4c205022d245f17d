"""The named locks: one OS lock file per kind of work, held while the process lives, freed when it dies.

Every lock is defined here once (name and what the refusal calls it), so two modules cannot
disagree on a lock's name, and a pass that must exclude several kinds (retention) names them.
"""
from __future__ import annotations

import fcntl
import os
import socket
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

from pitrsite import home
from pitrsite.errors import LockBusy

HOST = socket.gethostname()


@dataclass(frozen=True)
class Lock:
    name: str  # run/<name>.lock
    what: str  # "another <what> is running"

    @contextmanager
    def held(self) -> Iterator[None]:
        """Take it or raise LockBusy at once (never wait: a beat pass skips, a job is refused)."""
        lockdir = home.run_dir()
        lockdir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lockdir / f"{self.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                raise LockBusy(f"another {self.what} is running ({holder}): wait for it to finish") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {HOST}".encode(), 0)
            yield
        finally:
            os.close(fd)

    def refuse_if_held(self) -> None:
        """At submission: refuse a job whose lock is held now, rather than queue one no worker will run."""
        with self.held():
            pass


@contextmanager
def all_held(*locks: Lock) -> Iterator[None]:
    with ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock.held())
        yield


INDEX = Lock("index-wal", "WAL index pass")
UPLOAD = Lock("upload", "upload pass")
RETENTION = Lock("retention", "retention pass")
BACKUP = Lock("backup", "base backup")
RESTORE = Lock("restore", "restore")
CHAOS = Lock("chaos", "chaos run")
