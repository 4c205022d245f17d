"""A tiny process supervisor: run one command, restart it with backoff when it exits.

Deliberately free of Django (pitrsite.runner, which starts the child, imports none of it): it supervises
the WAL capturer (and the web, worker and beat processes in local mode) and must keep running when those die.

    python -m fleet.supervise --name capturer --rundir RUN [--user postgres] [--wal-archive DIR] -- ARGV...

Its stdout and stderr (and the child's) go where its starter points them: logs/NAME.log.

Files in RUN: NAME.supervisor.pid (this process), NAME.pid (the child),
NAME.state.json (restart count, last exit). SIGTERM stops the child and the
supervisor; SIGHUP restarts the child (a graceful restart). With --wal-archive (the capturer), every start
is preceded by clear_unwritten_partials() of that directory.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pitrsite import runner

MIN_BACKOFF, MAX_BACKOFF, HEALTHY_AFTER = 0.5, 10.0, 30.0


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def clear_unwritten_partials(archive: Path) -> list[str]:
    """Remove every .partial that holds only zeros; returns what it removed, with its size.

    pg_receivewal fills a new segment file with zeros before it writes any WAL to it (walmethods.c,
    dir_open_for_write), and refuses to start while a .partial holds neither 0 bytes nor a whole segment:
    one stopped while it was filling the file left exactly that, and capture then retried forever ("has 630784
    bytes, should be 0 or 1048576"). A file of zeros holds no WAL; pg_receivewal makes it again, from the
    same LSN (the end of the segment before it, which its slot holds)."""
    removed = []
    for path in sorted(archive.glob("*.partial")):
        try:
            with open(path, "rb") as fh:
                if any(chunk != bytes(len(chunk)) for chunk in iter(lambda: fh.read(1 << 20), b"")):
                    continue  # WAL: pg_receivewal continues it
            size = path.stat().st_size
            path.unlink()
        except OSError:
            continue  # gone meanwhile, or unreadable: pg_receivewal says what it makes of it
        removed.append(f"{path.name} ({size} bytes)")
    return removed


class Supervisor:
    def __init__(self, name: str, argv: list[str], rundir: Path, user: str | None, wal_archive: Path | None = None):
        self.name, self.argv, self.rundir, self.user, self.wal_archive = name, argv, rundir, user, wal_archive
        self.child: subprocess.Popen | None = None
        self.stopping = False
        self.state: dict[str, Any] = {"name": name, "argv": argv, "restarts": 0, "started_at": now(), "last_exit": None}

    def log(self, message: str) -> None:
        print(f"{now()} supervise[{self.name}]: {message}", flush=True)

    def save_state(self) -> None:
        tmp = self.rundir / f"{self.name}.state.json.tmp"
        tmp.write_text(json.dumps(self.state))
        tmp.replace(self.rundir / f"{self.name}.state.json")

    def spawn(self) -> None:
        if self.wal_archive is not None:
            for what in clear_unwritten_partials(self.wal_archive):
                self.log(f"removed {what} from {self.wal_archive}: only zeros, a segment file begun but never "
                         "written (pg_receivewal refuses to start on it)")
        # Its own process group (the runner's rule), so that what it forked (Celery's pool, gunicorn's
        # workers) can be found and killed with it, as systemd's KillMode=control-group does; it dies
        # with the supervisor, so a SIGKILLed supervisor leaves no unsupervised child.
        self.child = runner.popen(self.argv, user=self.user, stdout=None, stderr=None)
        (self.rundir / f"{self.name}.pid").write_text(f"{self.child.pid}\n")
        self.state["child_pid"] = self.child.pid
        self.save_state()
        self.log(f"started pid {self.child.pid}: {' '.join(self.argv)}")

    def kill_leftovers(self) -> None:
        """Orphans of a dead child (a SIGKILLed Celery worker leaves its pool processes) die with it."""
        assert self.child is not None  # after spawn
        try:
            os.killpg(self.child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def on_term(self, signum, frame) -> None:
        self.stopping = True
        if self.child and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def on_hup(self, signum, frame) -> None:
        if self.child and self.child.poll() is None:
            self.log("restart requested")
            self.child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        signal.signal(signal.SIGHUP, self.on_hup)
        (self.rundir / f"{self.name}.supervisor.pid").write_text(f"{os.getpid()}\n")
        backoff = MIN_BACKOFF
        while not self.stopping:
            started = time.monotonic()
            self.spawn()
            assert self.child is not None
            code = self.child.wait()
            self.kill_leftovers()
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            self.state["last_exit"] = {"at": now(), "how": how}
            if self.stopping:
                break
            if time.monotonic() - started > HEALTHY_AFTER:
                backoff = MIN_BACKOFF
            self.state["restarts"] += 1
            self.save_state()
            self.log(f"child {how}; restart #{self.state['restarts']} in {backoff:.1f} s")
            deadline = time.monotonic() + backoff
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(0.1)
            backoff = min(backoff * 2, MAX_BACKOFF)
        for suffix in (".pid", ".supervisor.pid"):
            (self.rundir / f"{self.name}{suffix}").unlink(missing_ok=True)
        self.log("stopped")
        return 0


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--rundir", required=True, type=Path)
    parser.add_argument("--user", help="run the child as this OS user when we are root")
    parser.add_argument("--wal-archive", type=Path, help="pg_receivewal's directory: see clear_unwritten_partials")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    opts = parser.parse_args(args)
    argv = opts.argv[1:] if opts.argv[:1] == ["--"] else opts.argv
    if not argv:
        parser.error("nothing to supervise: give the command after --")
    return Supervisor(opts.name, argv, opts.rundir, opts.user, opts.wal_archive).run()


if __name__ == "__main__":
    sys.exit(main())
