"""Each job's own log: its steps and the lines its tools printed (pg_basebackup, tar, the restored server's
recovery lines), one plain text file per job under logs/jobs/, shown on the job page and downloadable.

A file, not a database column: a tool can print thousands of lines and a busy database must not lose them.
"""
from __future__ import annotations

from pathlib import Path

from django.utils import timezone

from pitrsite import home

MAX_LINE = 2000


def path_of(key: str) -> Path:
    """key: pitrsite.jobs.job_key(job), e.g. RestoreJob-12."""
    return home.home() / home.LOGS / "jobs" / f"{key}.log"


def append(key: str, *lines: str) -> None:
    path = path_of(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = timezone.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    with open(path, "a", encoding="utf-8", errors="replace") as fh:
        for line in lines:
            fh.write(f"{stamp} {line.rstrip()[:MAX_LINE]}\n")


def tail(key: str, lines: int = 200) -> list[str]:
    try:
        with open(path_of(key), encoding="utf-8", errors="replace") as fh:
            return fh.read().splitlines()[-lines:]
    except FileNotFoundError:
        return []
