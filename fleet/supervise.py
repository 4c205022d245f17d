"""A tiny process supervisor: run one command, restart it with backoff when it exits.

Deliberately free of Django (pitrsite.runner, which starts the child, imports none of it): it supervises
the WAL capturer (and the web, worker and beat processes in local mode) and must keep running when those die.

    python -m fleet.supervise --name capturer --rundir RUN [--user postgres] -- ARGV...

Its stdout and stderr (and the child's) go where its starter points them: logs/NAME.log.

Files in RUN: NAME.supervisor.pid (this process), NAME.pid (the child),
NAME.state.json (restart count, last exit). SIGTERM stops the child and the
supervisor; SIGHUP restarts the child (a graceful restart).
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


class Supervisor:
    def __init__(self, name: str, argv: list[str], rundir: Path, user: str | None):
        self.name, self.argv, self.rundir, self.user = name, argv, rundir, user
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
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    opts = parser.parse_args(args)
    argv = opts.argv[1:] if opts.argv[:1] == ["--"] else opts.argv
    if not argv:
        parser.error("nothing to supervise: give the command after --")
    return Supervisor(opts.name, argv, opts.rundir, opts.user).run()


if __name__ == "__main__":
    sys.exit(main())
