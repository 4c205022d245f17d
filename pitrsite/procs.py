"""Process helpers over /proc: liveness, stopped state, descendants, process groups.

At the bottom layer: the job machinery (pitrsite/jobs.py) kills what a job started, and the fleet starts
and supervises servers; both use these helpers.
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import time
from pathlib import Path
from typing import Iterator, TypeGuard


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def proc_state(pid: int) -> str | None:
    """The one-letter state from /proc/PID/stat ('T' is stopped), None if gone or a zombie."""
    fields = _stat_fields(pid)
    return None if fields is None or fields[0] in ("Z", "X") else fields[0]


def alive(pid: int | None) -> TypeGuard[int]:
    return pid is not None and proc_state(pid) is not None


def paused(pid: int | None) -> TypeGuard[int]:
    return pid is not None and proc_state(pid) in ("T", "t")


def _processes() -> Iterator[tuple[int, str, int, int]]:
    """(pid, state, ppid, process group) of every live process, from /proc/PID/stat."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None:
            continue
        state, ppid, pgrp = fields[:3]
        if state not in ("Z", "X"):
            yield int(entry.name), state, int(ppid), int(pgrp)


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (state, ppid, pgrp, ...), None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def descends_from(pid: int | None, ancestor: int | None) -> bool:
    """Is pid the process `ancestor` or one of its descendants?"""
    while pid and pid > 1 and ancestor:
        if pid == ancestor:
            return True
        fields = _stat_fields(pid)
        if fields is None:
            return False
        pid = int(fields[1])
    return False


def client_pids(program: str, needle: str) -> list[int]:
    """Processes of `program` with `needle` in their arguments (server-side walsenders do not count)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and Path(argv[0].decode()).name == program and any(needle.encode() in a for a in argv):
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """All live descendants of pid (PostgreSQL backends, walsenders, ...)."""
    children: dict[int, list[int]] = {}
    for child, _, ppid, _ in _processes():
        children.setdefault(ppid, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pids_in_groups(groups: set[int]) -> list[int]:
    """Live processes whose process group is one of `groups`."""
    return [pid for pid, _, _, pgrp in _processes() if pgrp in groups]


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on host:port. Bound as servers bind (SO_REUSEADDR), so connections
    a stopped server left in TIME_WAIT do not count."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            return True
    return False


def signal_tree(pid: int, sig: int) -> None:
    """Signal a process and all its descendants (parent first for STOP, last for CONT)."""
    tree = [pid, *descendants(pid)]
    if sig == signal.SIGCONT:
        tree.reverse()
    for target in tree:
        try:
            os.kill(target, sig)
        except ProcessLookupError:
            pass


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


