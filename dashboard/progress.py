"""One overall progress figure per job, that never goes backwards, and the unit of the current step's progress.

A job's steps report their own progress (bytes copied, files staged, seconds of chaos written), each from
0 to its own total, so the row's percent restarts at every step. The overall bar weighs each step by
roughly how long it takes and adds the finished steps to the current step's fraction: it only grows.
A step not listed weighs nothing (drill checks, downloads that may not happen), so it never pulls the bar
back; a finished job reads 100.
"""
from __future__ import annotations

# Steps in the order the domain code names them (walcatalog/backups.py, restores/engine.py, chaos/run.py),
# with a weight proportional to their usual share of the job's time. A name ending in "*" is a prefix
# (chaos's "restoring T 2/5" steps are one group whose own progress counts the moments).
STEPS: dict[str, tuple[tuple[str, int], ...]] = {
    "backup": (("copying files (pg_basebackup)", 71),
               ("verifying (manifest checksums, pg_waldump)", 29)),
    "restore": (("planning", 2), ("stopping the restore target", 2), ("emptying the data directory", 2),
                ("extracting the backup", 30), ("checking WAL against the catalog", 4),
                ("staging WAL", 4), ("configuring recovery", 1), ("replaying WAL", 45),
                ("syncing the copy to disk", 0), ("promoting", 4),
                ("verifying", 6)),
    "chaos": (("checking the fleet", 1), ("backing up", 8), ("writing with chaos", 45), ("settling", 3),
              ("resolving unknown writes", 2), ("reading commit LSNs", 2), ("restoring T*", 37), ("verifying", 2)),
}
# What a step's progress_done/progress_total count, when not bytes.
UNITS = {"writing with chaos": "seconds", "restoring T*": "moments", "staging WAL": "files", "downloading WAL": "files"}


def group(name: str, kind: str) -> str:
    """The STEPS entry a step name belongs to ("restoring T 2/5" -> "restoring T*")."""
    for step, _ in STEPS.get(kind, ()):
        if step == name or (step.endswith("*") and name.startswith(step[:-1])):
            return step
    return name


def expected(kind: str) -> list[str]:
    """The step names shown greyed until they start (prefix groups shown without the star)."""
    return [name.rstrip("*") + ("…" if name.endswith("*") else "") for name, weight in STEPS.get(kind, ())
            if weight or kind != "restore"]


def unit(kind: str, step: str) -> str:
    return UNITS.get(group(step, kind), "bytes")


def step_fraction(done: int, total: int | None) -> float:
    return max(0.0, min(1.0, done / total)) if total else 0.0


def overall(kind: str, state: str, steps: list[dict], current: str, done: int, total: int | None) -> float | None:
    """Percent of the whole job; None before the first step of a running job (the bar shows activity)."""
    if state == "done":
        return 100.0
    weights = dict(STEPS.get(kind, ()))
    if not weights or not steps:
        return None
    whole = sum(weights.values())
    finished = {group(s["name"], kind) for s in steps if s.get("seconds") is not None}
    now = group(current, kind) if current else ""
    finished.discard(now)  # a group ("restoring T*") is finished only when the job moved past it
    # Steps that never ran but lie before the current one (a download skipped) count as done.
    order = [name for name, _ in STEPS[kind]]
    if now in order:
        finished.update(order[:order.index(now)])
    got: float = sum(weights.get(name, 0) for name in finished)
    if now in weights:
        got += weights[now] * step_fraction(done, total)
    return round(100.0 * got / whole, 1)
