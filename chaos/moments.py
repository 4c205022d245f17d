"""Picking the moments T a chaos run restores to (see chaos.check for why some are set aside)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from chaos.log import LoggedRow
from chaos.writers import iso


@dataclass
class Moment:
    at: datetime
    kind: str  # "at a commit" or "between commits"

    def as_json(self) -> dict:
        return {"at": iso(self.at), "kind": self.kind}


# --- choosing moments ------------------------------------------------------------------------
def pick_moments(rows: list[LoggedRow], count: int, after: datetime, until: datetime,
                 rng: random.Random) -> tuple[list[Moment], dict]:
    """``count`` moments in (after, until]: half at a commit's exact time, half between two commits.

    Only moments where commit-time order and WAL order agree (see the module
    docstring); rows must be sorted by commit time and carry commit LSNs.
    """
    n = len(rows)
    lsns = [r.commit_lsn if r.commit_lsn is not None else (r.lsn_after or 0) for r in rows]
    prefix_max, suffix_min = [0] * n, [0] * (n + 1)
    running = -1
    for i, lsn in enumerate(lsns):
        running = max(running, lsn)
        prefix_max[i] = running
    suffix_min[n] = 1 << 64
    for i in range(n - 1, -1, -1):
        suffix_min[i] = min(suffix_min[i + 1], lsns[i])
    at_commit, between, reordered = [], [], 0
    for i in range(n):
        if i + 1 < n and rows[i + 1].committed_at == rows[i].committed_at:
            continue  # the last of equal times stands for them all
        t = rows[i].committed_at
        if not (after < t <= until):
            continue
        if prefix_max[i] >= suffix_min[i + 1]:
            reordered += 1
            continue
        at_commit.append(Moment(t, "at a commit"))
        if (i + 1 < n and rows[i + 1].committed_at - t >= timedelta(microseconds=2)
                and rows[i + 1].committed_at <= until):
            mid = t + (rows[i + 1].committed_at - t) / 2
            between.append(Moment(mid, "between commits"))
    want_between = min(len(between), count // 2)
    chosen = rng.sample(between, want_between) + rng.sample(at_commit, min(len(at_commit), count - want_between))
    if len(chosen) < count:  # top up from whichever kind has more
        rest = [m for m in between if m not in chosen]
        chosen += rng.sample(rest, min(len(rest), count - len(chosen)))
    chosen.sort(key=lambda m: m.at)
    return chosen, {"candidates_at_commit": len(at_commit), "candidates_between": len(between),
                    "set_aside_reordered": reordered}


