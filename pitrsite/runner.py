"""The one way pitrsite starts a process.

Every subprocess gets an argument list (never a shell), its own process
group, the environment merged over ours, and optionally the PostgreSQL
server account (PostgreSQL refuses to run as root). A job's tools are
recorded under the job's key so the reaper can kill their whole groups when
the job's process is gone: pg_basebackup forks a WAL streamer that outlives it.

No preexec_fn: Python runs it between fork and exec, where a lock held by
another thread (the WAL download thread runs while tar is started) deadlocks
the child. The user switch and the process group are done by subprocess
itself; "die with the parent" is `setpriv --pdeathsig KILL` (util-linux).
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Callable, Sequence

from pitrsite import procs
from pitrsite.errors import FleetError, ToolFailed


@lru_cache(maxsize=None)
def _account(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise FleetError(
            f"running as root but OS user {name!r} does not exist: create it (useradd --system {name}) "
            "or set PITR_PG_OS_USER"
        ) from None


def server_account() -> pwd.struct_passwd | None:
    """The account server-side commands run as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    from django.conf import settings
    return _account(settings.PITR_PG_OS_USER)


def account_env(account: pwd.struct_passwd) -> dict[str, str]:
    return {"HOME": account.pw_dir, "USER": account.pw_name, "LOGNAME": account.pw_name}


@lru_cache(maxsize=1)
def _setpriv() -> str | None:
    return shutil.which("setpriv")


def _children_file(owner: str) -> Path:
    from pitrsite import home
    return home.run_dir("children", f"{owner}.pgids")


def popen(argv: Sequence[str], *, as_server: bool = False, user: str | None = None, env: dict | None = None,
          cwd: Path | str = "/", owner: str | None = None, detached: bool = False,
          stdout: int | IO[Any] | None = subprocess.DEVNULL, stderr: int | IO[Any] | None = subprocess.PIPE,
          text: bool = True, stdin: int | IO[Any] | None = subprocess.DEVNULL) -> subprocess.Popen:
    """Start argv in its own process group.

    as_server/user: run as the server account (or the named one) when we are root.
    owner: the job key whose tools these are (recorded for the reaper).
    detached: a new session that outlives us (services, the chaos resumer); otherwise the
    process is killed when we die.
    """
    argv = [str(a) for a in argv]
    kwargs: dict[str, Any] = {}
    merged = dict(os.environ)
    account = (_account(user) if os.geteuid() == 0 else None) if user else server_account() if as_server else None
    if account is not None:
        kwargs.update(user=account.pw_uid, group=account.pw_gid, extra_groups=[])
        merged.update(account_env(account))
    merged.update(env or {})
    if detached:
        kwargs["start_new_session"] = True
    else:
        kwargs["process_group"] = 0
        setpriv = _setpriv()
        if setpriv:
            argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
    proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, text=text,
                            cwd=cwd, env=merged, close_fds=True, **kwargs)
    if owner:
        path = _children_file(owner)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fh.write(f"{proc.pid}\n")
    return proc


def run(argv: Sequence[str], *, step: str, as_server: bool = False, env: dict | None = None,
        cwd: Path | str = "/", timeout: float | None = 600, check: bool = True, owner: str | None = None,
        on_line: Callable[[str], bool] | None = None) -> subprocess.CompletedProcess:
    """Run to completion; a failure raises ToolFailed(step, <the tool's first error line>).

    on_line: stderr is read line by line as it comes (progress); a line the handler
    does not take (returns False) is kept for the error message.
    check=False returns a non-zero exit too, for tools whose exit status is a finding (pg_amcheck).
    """
    try:
        proc = popen(argv, as_server=as_server, env=env, cwd=cwd, owner=owner, stdout=subprocess.PIPE)
    except FileNotFoundError as exc:
        raise ToolFailed(step, f"{exc.filename} not found") from None
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        kill_group(proc.pid)

    timer = threading.Timer(timeout, expire) if timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        if on_line is None:
            out, err = proc.communicate()
        else:
            assert proc.stderr is not None and proc.stdout is not None
            chunks: list[str] = []  # stdout drained alongside, so a full pipe cannot stall the tool
            stdout = proc.stdout
            drain = threading.Thread(target=lambda: chunks.append(stdout.read()), daemon=True)
            drain.start()
            kept = [line for line in proc.stderr if not on_line(line)]
            proc.wait()
            drain.join()
            out, err = "".join(chunks), "".join(kept)
    finally:
        if timer:
            timer.cancel()
    if expired.is_set():
        raise ToolFailed(step, f"timed out after {timeout:.0f} s")
    result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    if check and result.returncode != 0:
        raise ToolFailed(step, error_line(err or out))
    return result


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def error_line(text: str) -> str:
    """The line of a tool's output that says what went wrong: the first one naming an error, else the first."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "fatal" in line.lower()]
    return (errors or lines or ["no output"])[0]


def kill_children(owner: str) -> int:
    """SIGKILL every process still in the groups a job started; returns how many."""
    path = _children_file(owner)
    try:
        groups = {int(line) for line in path.read_text().split()}
    except FileNotFoundError:
        return 0
    killed = 0
    for pid in procs.pids_in_groups(groups):
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    path.unlink(missing_ok=True)
    return killed


def start_supervised(name: str, argv: list[str], rundir: Path, logfile: Path, user: str | None = None,
                     env: dict | None = None, cwd: Path | None = None, wal_archive: Path | None = None) -> int:
    """Start `fleet.supervise` detached (own session), so it outlives whoever started it."""
    command = [sys.executable, "-m", "fleet.supervise", "--name", name, "--rundir", str(rundir)]
    if user:
        command += ["--user", user]
    if wal_archive:
        command += ["--wal-archive", str(wal_archive)]
    command += ["--", *argv]
    project = Path(__file__).resolve().parent.parent
    with open(logfile, "ab") as log:
        proc = popen(command, detached=True, stdout=log, stderr=subprocess.STDOUT, cwd=cwd or project,
                     env={"PYTHONPATH": str(project), **(env or {})})
    deadline = time.monotonic() + 10
    child_pidfile = rundir / f"{name}.pid"
    while time.monotonic() < deadline and not procs.alive(procs.read_pid(child_pidfile)):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    return proc.pid


def stop_supervised(name: str, rundir: Path, timeout: float = 20) -> bool:
    """SIGTERM the supervisor (it stops its child); returns False if it was not running."""
    pid = procs.read_pid(rundir / f"{name}.supervisor.pid")
    if not procs.alive(pid):
        return False
    child = procs.read_pid(rundir / f"{name}.pid")
    if procs.paused(child):
        os.kill(child, signal.SIGCONT)
    os.kill(pid, signal.SIGTERM)
    if not procs.wait_gone(pid, timeout):
        procs.signal_tree(pid, signal.SIGKILL)
    return True
