"""Timeline chains: which timelines, and which LSN span of each, a restore to a timeline replays."""
from __future__ import annotations

from typing import cast

from django.db.models import Q

from restores.targets import PlanError, RestoreTarget
from walcatalog import walnames
from walcatalog.gaps import timelines_held
from walcatalog.models import BaseBackup, RestorePoint, Timeline


class Chain:
    """The timelines a restore to `tli` passes through, with each one's LSN span."""

    def __init__(self, tli: int):
        self.tli = tli
        row = Timeline.objects.filter(tli=tli).first()
        self.spans: list[tuple[int, int, int | None]]
        if tli == 1 or row is None or not row.history:
            self.spans = [(tli, 0, None)]
        else:
            self.spans = walnames.history_timeline_chain(walnames.parse_history(row.history), tli)

    def q(self, segment_size: int) -> Q:
        """Segments that belong to this chain (a parent's segments only up to its switch)."""
        query = Q(pk__in=[])
        for tli, begin, end in self.spans:
            span = Q(timeline=tli, segno__gte=walnames.segment_of_lsn(begin, segment_size))
            if end is not None:
                span &= Q(segno__lte=walnames.segment_of_lsn(end - 1, segment_size))
            query |= span
        return query

    def timeline_at(self, segno: int, segment_size: int) -> int:
        """Which timeline's file holds this segment: the newest whose span has begun (as PostgreSQL reads)."""
        for tli, begin, _ in reversed(self.spans):
            if segno >= walnames.segment_of_lsn(begin, segment_size):
                return tli
        return self.spans[0][0]

    def holds(self, backup: BaseBackup) -> bool:
        for tli, _, end in self.spans:
            # a verified backup has its stop LSN
            if backup.timeline == tli and (end is None or cast(int, backup.stop_lsn) <= end):
                return True
        return False

    def history_rows(self) -> list[Timeline]:
        return list(Timeline.objects.filter(tli__in=[t for t, _, _ in self.spans], tli__gt=1))


def target_timeline(target: RestoreTarget, backups: list[BaseBackup]) -> int:
    # Only a timeline with WAL or a backup can be restored to: a stray history file alone is not one.
    newest = max([*timelines_held(),
                  *(cast(int, b.timeline) for b in backups)])  # a usable backup has its timeline
    if not target.timeline:
        return newest
    tli = int(target.timeline)
    if tli > newest:
        raise PlanError(f"timeline {tli} is not in the catalog: the newest is {newest}")
    return tli


def restore_point(name: str, chain: Chain) -> int:
    # Only a point on the chain's own history: a name reused on a sibling branch is not ours.
    on_chain = Q(pk__in=[])
    for tli, begin, end in chain.spans:
        on_chain |= Q(timeline=tli, lsn__gte=begin) & (Q() if end is None else Q(lsn__lt=end))
    point = RestorePoint.objects.filter(on_chain, name=name).order_by("-lsn").first()
    if point is None:
        raise PlanError(f"no restore point named {name!r} in the captured WAL "
                        "(create one with SELECT pg_create_restore_point('name'))")
    return point.lsn
