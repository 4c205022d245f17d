"""Turn a restore target into a plan: which backup, which WAL files, which settings.

The planner only reads the catalog (and, for an xid, asks the primary when
that transaction committed). It rejects impossible targets with one line
and touches nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from django.db.models import Exists, Max, OuterRef, Q

from pitrsite.errors import PitrError
from restores.models import TargetKind
from walcatalog import catalog, walnames
from walcatalog import storage as st
from walcatalog.backups import held_locally, restorable_backups, storage_copies
from walcatalog.models import BaseBackup, StorageCopy, Timeline, WalSegment

EXAMPLE_TIME = "2026-11-27T14:03:27+00:00"


class PlanError(PitrError):
    pass


class NotYetCaptured(PlanError):
    """The target lies after what the catalog holds: it may only not be indexed yet."""


@dataclass(frozen=True)
class RestoreTarget:
    kind: str
    value: str = ""
    exclusive: bool = False
    timeline: str = ""  # "" = the newest timeline in the catalog, or a number
    backup_id: int | None = None

    @classmethod
    def from_options(cls, *, time: str | None = None, lsn: str | None = None, xid: str | None = None,
                     name: str | None = None, immediate: bool = False, latest: bool = False,
                     exclusive: bool = False, timeline: str | None = None,
                     backup_id: int | None = None) -> "RestoreTarget":
        given = [(kind, value)
                 for kind, value in ((TargetKind.TIME, time), (TargetKind.LSN, lsn), (TargetKind.XID, xid),
                                     (TargetKind.NAME, name)) if value not in (None, "")]
        given += [(kind, "") for kind, flag in ((TargetKind.IMMEDIATE, immediate), (TargetKind.LATEST, latest)) if flag]
        if len(given) != 1:
            what = "two or more targets" if given else "no target"
            raise PlanError(f"{what} given: choose exactly one of --target-time, --target-lsn, --target-xid, "
                            "--target-name, --immediate, --latest")
        kind, value = given[0]
        target = cls(kind=kind, value=str(value).strip(), exclusive=exclusive, timeline=(timeline or "").strip(),
                     backup_id=backup_id)
        target.validate()
        return target

    def validate(self) -> None:
        if self.kind not in TargetKind.values:
            raise PlanError(f"unknown target kind {self.kind!r}: choose one of {', '.join(TargetKind.values)}")
        if self.exclusive and self.kind not in (TargetKind.TIME, TargetKind.LSN, TargetKind.XID):
            raise PlanError("--exclusive applies only to time, LSN and xid targets")
        if self.kind == TargetKind.TIME:
            _ = self.time  # the property raises PlanError on a bad value
        elif self.kind == TargetKind.LSN:
            _ = self.lsn  # the property raises PlanError on a bad value
        elif self.kind == TargetKind.XID:
            _ = self.xid  # the property raises PlanError on a bad value
        elif self.kind == TargetKind.NAME and not (0 < len(self.value) < 64):
            raise PlanError("restore point name must be 1 to 63 characters")
        if self.timeline and not (self.timeline.isdigit() and int(self.timeline) > 0):
            raise PlanError(f"timeline {self.timeline!r} is not a positive number")

    @property
    def time(self) -> datetime:
        try:
            value = datetime.fromisoformat(self.value)
        except ValueError:
            raise PlanError(f"target time {self.value!r} is not ISO 8601: use the form {EXAMPLE_TIME}") from None
        if value.tzinfo is None:
            raise PlanError(f"target time {self.value!r} has no time zone: add one, for example {EXAMPLE_TIME}")
        return value

    @property
    def lsn(self) -> int:
        try:
            return walnames.parse_lsn(self.value)
        except walnames.WalNameError as exc:
            raise PlanError(str(exc)) from None

    @property
    def xid(self) -> int:
        if not self.value.isdigit() or not (3 <= int(self.value) < 2 ** 32):
            raise PlanError(f"transaction id {self.value!r} is not a number from 3 to 4294967295")
        return int(self.value)


@dataclass
class Plan:
    target: RestoreTarget
    backup: BaseBackup
    timeline: int
    segments: list[WalSegment] = field(default_factory=list)  # in replay order; the last may be partial
    history: list[Timeline] = field(default_factory=list)
    recovery: dict[str, str] = field(default_factory=dict)
    target_lsn: int | None = None  # where replay must at least reach, when known
    note: str = ""

    @property
    def partial(self) -> WalSegment | None:
        return self.segments[-1] if self.segments and self.segments[-1].is_partial else None

    def describe(self) -> dict:
        return {
            "backup": {"id": self.backup.pk, "label": self.backup.label, "stop_lsn": self.backup.stop_lsn_text},
            "timeline": self.timeline,
            "wal_first": self.segments[0].file_name if self.segments else None,
            "wal_last": self.segments[-1].file_name if self.segments else None,
            "wal_files": len(self.segments),
            "history": [walnames.history_name(t.tli) for t in self.history],
            "recovery": self.recovery,
            "target_lsn": walnames.format_lsn(self.target_lsn) if self.target_lsn is not None else None,
            "note": self.note,
        }


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


def plan(target: RestoreTarget, primary_port: int | None = None) -> Plan:
    backups = list(restorable_backups())
    if not backups:
        raise PlanError("no verified base backup yet: run `python manage.py backup` first")
    seg_size = catalog.segment_size()
    chain = Chain(_target_timeline(target, backups))
    segments = WalSegment.objects.filter(chain.q(seg_size))
    on_chain = [b for b in backups if chain.holds(b)]
    candidates = [b for b in on_chain if available(b)]  # a lost newer backup must not hide an older one
    if target.backup_id is not None:
        forced = BaseBackup.objects.filter(pk=target.backup_id).first()
        if forced is None:
            raise PlanError(f"backup #{target.backup_id} does not exist: `python manage.py backups` lists them")
        if not forced.restorable:
            raise PlanError(f"backup #{forced.pk} is not restorable (state {forced.state}, "
                            f"manifest verified: {forced.manifest_verified})")
        if not available(forced):
            raise PlanError(f"backup #{forced.pk} is held neither locally nor in storage {st.describe()}")
        candidates = [forced] if chain.holds(forced) else []
    if not candidates:
        lost = f" ({len(on_chain)} there are held neither locally nor in storage)" if on_chain else ""
        raise PlanError(f"no verified backup lies on timeline {chain.tli}'s history{lost}")

    newest_commit = segments.aggregate(t=Max("last_commit_at"))["t"]
    result = Plan(target=target, backup=candidates[0], timeline=chain.tli, history=chain.history_rows())
    end_segno: int | None
    if target.kind in (TargetKind.TIME, TargetKind.XID):
        when = target.time if target.kind == TargetKind.TIME else _xid_commit_time(target.xid, primary_port)
        if newest_commit is None or when > newest_commit:
            newest = newest_commit.isoformat() if newest_commit else "none yet"
            raise NotYetCaptured(f"target {when.isoformat()} is after the newest captured commit ({newest}): "
                            "restore to that moment or earlier, or use --latest")
        result.backup = _backup_before(candidates, lambda b: b.stop_time <= when, f"time {when.isoformat()}")
        # Replay stops at the first commit after the target, so the range must reach it.
        later = segments.filter(last_commit_at__gte=when) if target.exclusive or target.kind == TargetKind.XID \
            else segments.filter(last_commit_at__gt=when)
        stopper = later.order_by("segno").first()
        if target.kind == TargetKind.XID:
            end_segno = None  # the xid's commit is somewhere from here on: take the rest
        elif stopper is None:
            # No commit after T was captured: T is the newest commit itself. Stop right after it
            # (PostgreSQL refuses to end recovery before a time target is passed).
            last = segments.filter(last_commit_at=newest_commit).order_by("-segno").first()
            assert last is not None and last.last_commit_lsn is not None  # it holds the newest commit
            result.target_lsn = last.last_commit_lsn
            result.recovery = {"recovery_target_lsn": walnames.format_lsn(last.last_commit_lsn),
                               "recovery_target_inclusive": "on"}
            result.note = "the target is the newest captured commit: stopping right after its commit record"
            end_segno = last.segno
        else:
            end_segno = stopper.segno
        if not result.recovery:
            key = "recovery_target_time" if target.kind == TargetKind.TIME else "recovery_target_xid"
            value = when.isoformat(sep=" ") if target.kind == TargetKind.TIME else str(target.xid)
            result.recovery = {key: value, "recovery_target_inclusive": "off" if target.exclusive else "on"}
    elif target.kind == TargetKind.LSN:
        lsn = target.lsn
        captured = _captured_end(segments)
        if lsn >= captured:
            raise NotYetCaptured(f"target LSN {target.value} is at or after the end of the captured WAL "
                            f"({walnames.format_lsn(captured)}): choose an earlier LSN or use --latest")
        result.backup = _backup_before(candidates, lambda b: b.stop_lsn <= lsn, f"LSN {target.value}")
        result.target_lsn = lsn
        result.recovery = {"recovery_target_lsn": walnames.format_lsn(lsn),
                           "recovery_target_inclusive": "off" if target.exclusive else "on"}
        end_segno = walnames.segment_of_lsn(lsn, seg_size)
    elif target.kind == TargetKind.NAME:
        point = _restore_point(target.value, chain)
        result.backup = _backup_before(candidates, lambda b: b.stop_lsn <= point, f"restore point {target.value!r}")
        result.target_lsn = point
        result.recovery = {"recovery_target_name": target.value}
        end_segno = walnames.segment_of_lsn(point, seg_size)
    elif target.kind == TargetKind.IMMEDIATE:
        result.target_lsn = result.backup.stop_lsn
        result.recovery = {"recovery_target": "immediate"}
        end_segno = -1  # the backup's own pg_wal holds everything needed
    else:  # latest: everything captured
        end_segno = None

    result.recovery.update({"recovery_target_timeline": str(chain.tli), "recovery_target_action": "promote"})
    result.segments = _wal_range(chain, segments, result.backup, end_segno, seg_size)
    return result


def available(backup: BaseBackup) -> bool:
    return held_locally(backup) or bool(storage_copies(backup, st.STORAGE_NAME))


def _target_timeline(target: RestoreTarget, backups: list[BaseBackup]) -> int:
    # Only a timeline with WAL or a backup can be restored to: a stray history file alone is not one.
    # order_by(): Meta.ordering would otherwise make distinct() return one row per segment.
    newest = max([*WalSegment.objects.order_by().values_list("timeline", flat=True).distinct(),
                  *(cast(int, b.timeline) for b in backups)])  # a usable backup has its timeline
    if not target.timeline:
        return newest
    tli = int(target.timeline)
    if tli > newest:
        raise PlanError(f"timeline {tli} is not in the catalog: the newest is {newest}")
    return tli


def _backup_before(candidates: list[BaseBackup], ok, what: str) -> BaseBackup:
    for backup in candidates:  # newest first
        if ok(backup):
            return backup
    oldest = candidates[-1]
    assert oldest.stop_time is not None  # a usable backup has its stop time
    raise PlanError(f"target {what} is before the end of the oldest usable backup #{oldest.pk} "
                    f"({oldest.stop_time.isoformat()}, LSN {oldest.stop_lsn_text}): choose a later target")


def _captured_end(segments) -> int:
    newest = segments.order_by("-segno").first()
    if newest is None:
        return 0
    return newest.scanned_to if newest.is_partial else newest.end_lsn


def _restore_point(name: str, chain: Chain) -> int:
    from walcatalog.models import RestorePoint

    # Only a point on the chain's own history: a name reused on a sibling branch is not ours.
    on_chain = Q(pk__in=[])
    for tli, begin, end in chain.spans:
        on_chain |= Q(timeline=tli, lsn__gte=begin) & (Q() if end is None else Q(lsn__lt=end))
    point = RestorePoint.objects.filter(on_chain, name=name).order_by("-lsn").first()
    if point is None:
        raise PlanError(f"no restore point named {name!r} in the captured WAL "
                        "(create one with SELECT pg_create_restore_point('name'))")
    return point.lsn


def _xid_commit_time(xid: int, primary_port: int | None) -> datetime:
    from fleet import pg

    from fleet.local import get_driver

    with (pg.connect(primary_port, timeout=5) if primary_port else get_driver().connect("primary", timeout=5)) as conn:
        row = conn.execute("SELECT pg_xact_commit_timestamp(%s::text::xid)", [str(xid)]).fetchone()
    if row is None or row[0] is None:
        raise PlanError(f"transaction {xid} has no commit time on the primary: it did not commit, "
                        "or committed before track_commit_timestamp was on")
    return row[0]


def _wal_range(chain: Chain, segments, backup: BaseBackup, end_segno: int | None, seg_size: int) -> list[WalSegment]:
    """The archive files replay needs after the backup's own pg_wal, checked for gaps."""
    assert backup.stop_lsn is not None  # a usable backup has its stop LSN
    first = walnames.segment_of_lsn(backup.stop_lsn, seg_size)
    if end_segno is None:
        newest = segments.order_by("-segno").first()
        end_segno = newest.segno if newest else first
    if end_segno < first:
        return []
    wanted = {segno: chain.timeline_at(segno, seg_size) for segno in range(first, end_segno + 1)}
    # A catalogued segment counts only where a good copy exists: an uncorrupted local one or verified in storage.
    held = segments.filter(segno__gte=first, segno__lte=end_segno).filter(
        Q(in_local_archive=True, corrupt_at__isnull=True)
        | Exists(StorageCopy.objects.filter(segment=OuterRef("pk"), verified_at__isnull=False)))
    found = {(s.timeline, s.segno): s for s in held}
    missing = [segno for segno, tli in wanted.items() if (tli, segno) not in found]
    if missing:
        names = [walnames.segment_name(wanted[s], s, seg_size) for s in (missing[0], missing[-1])]
        span = names[0] if len(missing) == 1 else f"{names[0]}..{names[1]} ({len(missing)} segments)"
        raise PlanError(f"WAL gap: {span} missing from the archive and from storage: restore to a moment "
                        "before it, or after a backup taken since")
    ordered = [found[(tli, segno)] for segno, tli in wanted.items()]
    partials = [s for s in ordered[:-1] if s.is_partial]
    if partials:
        raise PlanError(f"WAL gap: {partials[0].file_name} was never completed (the capturer moved past it)")
    return ordered
