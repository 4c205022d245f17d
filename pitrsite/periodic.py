"""What each periodic (beat) task did last, so a failing one shows on the overview and in /metrics.

A task skips quietly only when another pass holds its lock (LockBusy); any other failure is logged at
WARNING and recorded here. One small JSON file per task under run/tasks/, written atomically: no database
write, so a task whose failure is "database is locked" is recorded too.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, TypeVar

from django.conf import settings
from django.utils import timezone

from pitrsite import home
from pitrsite.errors import LockBusy, PitrError, first_line

log = logging.getLogger(__name__)
T = TypeVar("T")


def _folder() -> Path:
    return home.run_dir("tasks")


def _read(name: str) -> dict:
    try:
        return json.loads((_folder() / f"{name}.json").read_text())
    except (FileNotFoundError, ValueError):
        return {"task": name, "last_success_at": None, "last_error": "", "last_error_at": None, "errors": 0}


def _write(name: str, state: dict) -> None:
    folder = _folder()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.json.{os.getpid()}"
    tmp.write_text(json.dumps(state))
    tmp.replace(folder / f"{name}.json")


def run_periodic(name: str, work: Callable[[], T]) -> T | None:
    """Run one pass of a periodic task: skipped on LockBusy, recorded either way otherwise."""
    try:
        result = work()
    except LockBusy as busy:  # a slow pass overlapping the next tick is normal: that tick has nothing to add
        log.info("%s skipped: %s", name, busy)
        return None
    except Exception as exc:
        state = _read(name)
        state.update(last_error=first_line(exc), last_error_at=timezone.now().isoformat(),
                     errors=state["errors"] + 1)
        _write(name, state)
        # A PitrError's one line is the whole story; anything else gets its traceback.
        log.warning("%s failed: %s", name, first_line(exc), exc_info=not isinstance(exc, PitrError))
        return None
    state = _read(name)
    errors = getattr(result, "errors", None)  # a pass that ran but failed on some files or objects
    if errors:
        state.update(last_error=f"{len(errors)} error(s), first: {errors[0]}", last_error_at=timezone.now().isoformat(),
                     errors=state["errors"] + 1)
    else:
        state["last_success_at"] = timezone.now().isoformat()
    _write(name, state)
    return result


def states(server: str | None = None) -> list[dict]:
    """Every recorded task (of one server when named), `failing` when its last error is newer than its last
    success."""
    try:
        names = sorted(p.stem for p in _folder().glob("*.json"))
    except OSError:
        return []
    found = []
    for name in names:
        state = _read(name)
        # "index_wal-sales": the pass of server sales (walcatalog.tasks.per_server); no suffix: the demo server's.
        state["task"], _, state["server"] = name.partition("-")
        state["server"] = state["server"] or settings.PITR_DEMO_SERVER
        state["failing"] = bool(state["last_error_at"]) and (state["last_success_at"] or "") < state["last_error_at"]
        if server is None or state["server"] == server:
            found.append(state)
    return found
