"""Turn a restore target into a plan: which backup, which WAL files, which settings.

The planner only reads the catalog (and, for an xid, asks the primary when
that transaction committed). It rejects impossible targets with one line
and touches nothing. plan() picks the timeline chain and the usable backups,
then one function per target kind says where replay must stop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

from django.db.models import Max, QuerySet

from pitrsite.errors import NotYetCaptured, PlanError
from restores.chain import Chain, restore_point, target_timeline
from restores.models import TargetKind
from restores.targets import EXAMPLE_TIME, RestoreTarget
from walcatalog import catalog, gaps, walnames
from walcatalog import storage as st
from walcatalog.backups import held_locally, restorable_backups, storage_copies
from walcatalog.models import BaseBackup, StorageCopy, Timeline, WalSegment

__all__ = ["EXAMPLE_TIME", "NotYetCaptured", "Plan", "PlanError", "RestoreTarget", "available", "plan"]


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
    # The last segment is the .partial's storage snapshot (its local file is gone): staged like the .partial,
    # it ends where the snapshot ends.
    snapshot: StorageCopy | None = None

    @property
    def partial(self) -> WalSegment | None:
        return self.segments[-1] if self.segments and self.segments[-1].is_partial else None

    @property
    def partial_end(self) -> int | None:
        """Where the staged .partial's WAL ends: the snapshot's valid length, or what the indexer read locally."""
        partial = self.partial
        if partial is None:
            return None
        return partial.start_lsn + self.snapshot.size if self.snapshot else partial.scanned_to

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
            "partial_snapshot": None if self.snapshot is None else {
                "key": self.snapshot.key, "bytes": self.snapshot.size,
                "end_lsn": walnames.format_lsn(self.partial_end or 0),
                "newest_commit": self.snapshot.last_commit_at.isoformat() if self.snapshot.last_commit_at else None},
        }


@dataclass
class _Context:
    """What every target kind's planning reads: the chain, its segments and the usable backups."""
    target: RestoreTarget
    chain: Chain
    segments: QuerySet[WalSegment]
    candidates: list[BaseBackup]  # newest first
    seg_size: int
    primary_port: int | None
    snapshot: StorageCopy | None  # the newest segment is a .partial known only by its storage snapshot

    @property
    def snapshot_segno(self) -> int:
        assert self.snapshot is not None and self.snapshot.segment is not None  # a snapshot is of a segment
        return self.snapshot.segment.segno

    def complete(self) -> QuerySet[WalSegment]:
        """The segments whose commit fields are what replay will find: all but a snapshot-served .partial."""
        if self.snapshot is None or self.snapshot.segment is None:
            return self.segments
        return self.segments.exclude(pk=self.snapshot.segment.pk)


@dataclass
class _Stop:
    """Where one target kind stops: the backup to start from, the settings, and the last segment needed."""
    backup: BaseBackup
    recovery: dict[str, str]
    end_segno: int | None  # None: everything captured; -1: the backup's own pg_wal suffices
    target_lsn: int | None = None
    note: str = ""


def plan(target: RestoreTarget, primary_port: int | None = None) -> Plan:
    backups = list(restorable_backups())
    if not backups:
        raise PlanError("no verified base backup yet: run `python manage.py backup` first")
    seg_size = catalog.segment_size()
    chain = Chain(target_timeline(target, backups))
    segments = WalSegment.objects.filter(chain.q(seg_size))
    snapshot = _snapshot(segments)
    context = _Context(target, chain, segments, _candidates(target, chain, backups), seg_size, primary_port,
                       snapshot)
    stop = STOPS[target.kind](context)
    # A target pauses replay there: pitrsite makes the copy durable, then promotes it (restores/recovery.py).
    # The latest WAL has no target: recovery ends, and promotes, when the WAL does.
    action = "pause" if stop.recovery else "promote"
    recovery = {**stop.recovery, "recovery_target_timeline": str(chain.tli), "recovery_target_action": action}
    wal = _wal_range(chain, segments, stop.backup, stop.end_segno, seg_size)
    used = snapshot if snapshot and wal and wal[-1].pk == snapshot.segment_id else None
    return Plan(target=target, backup=stop.backup, timeline=chain.tli, history=chain.history_rows(),
                recovery=recovery, target_lsn=stop.target_lsn, note=stop.note, segments=wal, snapshot=used)


def _snapshot(segments: QuerySet[WalSegment]) -> StorageCopy | None:
    """The verified storage snapshot of the newest segment when that is a .partial with no good local file."""
    newest = segments.order_by("-segno").first()
    if newest is None or not newest.is_partial or (newest.in_local_archive and newest.corrupt_at is None):
        return None
    return StorageCopy.objects.select_related("segment").filter(
        storage=st.identity(), segment=newest, kind=StorageCopy.Kind.PARTIAL, verified_at__isnull=False).first()


def _candidates(target: RestoreTarget, chain: Chain, backups: list[BaseBackup]) -> list[BaseBackup]:
    """The backups a restore on this chain may start from: on it and held somewhere, or the one asked for."""
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
    return candidates


def _stop_at_commit(c: _Context) -> _Stop:
    """A time or xid target: replay stops at the first commit past it, so the range must reach that commit."""
    target = c.target
    when = target.time if target.kind == TargetKind.TIME else _xid_commit_time(target.xid, c.primary_port)
    complete, snap = c.complete(), c.snapshot
    found = [complete.aggregate(t=Max("last_commit_at"))["t"], snap.last_commit_at if snap else None]
    newest_commit = max((t for t in found if t is not None), default=None)
    if newest_commit is None or when > newest_commit:
        newest = newest_commit.isoformat() if newest_commit else "none yet"
        raise NotYetCaptured(f"target {when.isoformat()} is after the newest captured commit ({newest}): "
                             "restore to that moment or earlier, or use --latest")
    backup = _backup_before(c.candidates, lambda b: b.stop_time <= when, f"time {when.isoformat()}")
    if target.kind == TargetKind.XID:  # the xid's commit is somewhere from the backup on: take the rest
        return _Stop(backup, {"recovery_target_xid": str(target.xid),
                              "recovery_target_inclusive": "off" if target.exclusive else "on"}, None)
    later = complete.filter(last_commit_at__gte=when) if target.exclusive \
        else complete.filter(last_commit_at__gt=when)
    stopper = later.order_by("segno").values_list("segno", flat=True).first()
    if stopper is None and snap and snap.last_commit_at and (
            snap.last_commit_at > when or target.exclusive and snap.last_commit_at == when):
        stopper = c.snapshot_segno  # the snapshot holds a commit past T
    if stopper is None:
        # No commit after T was captured: T is the newest commit itself. Stop right after it
        # (PostgreSQL refuses to end recovery before a time target is passed).
        if snap and snap.last_commit_at == newest_commit:
            segno, lsn = c.snapshot_segno, snap.last_commit_lsn
        else:
            last = complete.filter(last_commit_at=newest_commit).order_by("-segno").first()
            assert last is not None  # it holds the newest commit
            segno, lsn = last.segno, last.last_commit_lsn
        assert lsn is not None  # a commit's row or snapshot records its LSN
        return _Stop(backup, {"recovery_target_lsn": walnames.format_lsn(lsn),
                              "recovery_target_inclusive": "on"}, segno, target_lsn=lsn,
                     note="the target is the newest captured commit: stopping right after its commit record")
    return _Stop(backup, {"recovery_target_time": when.isoformat(sep=" "),
                          "recovery_target_inclusive": "off" if target.exclusive else "on"}, stopper)


def _stop_at_lsn(c: _Context) -> _Stop:
    lsn = c.target.lsn
    captured = _captured_end(c)
    if lsn >= captured:
        raise NotYetCaptured(f"target LSN {c.target.value} is at or after the end of the captured WAL "
                             f"({walnames.format_lsn(captured)}): choose an earlier LSN or use --latest")
    backup = _backup_before(c.candidates, lambda b: b.stop_lsn <= lsn, f"LSN {c.target.value}")
    return _Stop(backup, {"recovery_target_lsn": walnames.format_lsn(lsn),
                          "recovery_target_inclusive": "off" if c.target.exclusive else "on"},
                 walnames.segment_of_lsn(lsn, c.seg_size), target_lsn=lsn)


def _stop_at_name(c: _Context) -> _Stop:
    point = restore_point(c.target.value, c.chain)
    backup = _backup_before(c.candidates, lambda b: b.stop_lsn <= point, f"restore point {c.target.value!r}")
    return _Stop(backup, {"recovery_target_name": c.target.value}, walnames.segment_of_lsn(point, c.seg_size),
                 target_lsn=point)


def _stop_when_consistent(c: _Context) -> _Stop:
    backup = c.candidates[0]
    return _Stop(backup, {"recovery_target": "immediate"}, -1, target_lsn=backup.stop_lsn)


def _stop_at_end(c: _Context) -> _Stop:
    return _Stop(c.candidates[0], {}, None)


STOPS: dict[str, Callable[[_Context], _Stop]] = {
    TargetKind.TIME: _stop_at_commit, TargetKind.XID: _stop_at_commit, TargetKind.LSN: _stop_at_lsn,
    TargetKind.NAME: _stop_at_name, TargetKind.IMMEDIATE: _stop_when_consistent, TargetKind.LATEST: _stop_at_end}


def available(backup: BaseBackup) -> bool:
    return held_locally(backup) or bool(storage_copies(backup, st.STORAGE_NAME))


def _backup_before(candidates: list[BaseBackup], ok, what: str) -> BaseBackup:
    for backup in candidates:  # newest first
        if ok(backup):
            return backup
    oldest = candidates[-1]
    assert oldest.stop_time is not None  # a usable backup has its stop time
    raise PlanError(f"target {what} is before the end of the oldest usable backup #{oldest.pk} "
                    f"({oldest.stop_time.isoformat()}, LSN {oldest.stop_lsn_text}): choose a later target")


def _captured_end(c: _Context) -> int:
    newest = c.segments.order_by("-segno").first()
    if newest is None:
        return 0
    if c.snapshot is not None:
        return newest.start_lsn + c.snapshot.size
    return newest.scanned_to if newest.is_partial else newest.end_lsn


def _xid_commit_time(xid: int, primary_port: int | None) -> datetime:
    from fleet import pg

    from fleet.driver import get_driver

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
    held = segments.filter(segno__gte=first, segno__lte=end_segno).filter(gaps.held())
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
