"""Index the WAL archive into the catalog, incrementally.

One pass lists the archive directory and compares each file's (size, mtime)
with its row; only new or changed files are hashed and read with pg_waldump,
so a pass over an archive that did not change costs one directory listing and
one query, whatever its size.

Rows are keyed by (timeline, segno). The growing ``.partial`` keeps one row:
each pass reads only the WAL appended since the last one (from ``scanned_to``)
and updates its size, without copying the file; when pg_receivewal renames it
to the complete name, the same row turns complete, gets its sha256, and its
commit times are finished from where the partial left off.

``size`` of a partial row is the WAL captured so far (``scanned_to`` minus the
segment start): pg_receivewal pads a .partial to the full segment size, so the
size on disk says nothing about progress.

Two passes may run at once (the beat task and ``manage.py index_wal``): rows
are created under the unique constraint (a lost race is an IntegrityError,
and the winner's row is kept) and changed with conditional UPDATEs that only
apply to the state the pass read (healthchecks' claim pattern), so nothing is
duplicated and nothing is counted twice.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.utils import timezone

from fleet import servers
from fleet.layout import Layout
from pitrsite.errors import PitrError
from pitrsite.jobs import Reporter
from walcatalog import catalog, walnames, waldump
from walcatalog import storage as st
from walcatalog.models import BaseBackup, RestorePoint, Timeline, WalSegment

log = logging.getLogger(__name__)

# Junk file names already warned about by this process: one warning each, not one per pass.
_warned: set[str] = set()
# A partial whose mtime is this close to its last scan may have been written again
# within the same mtime tick; it is read again until its last scan is clearly later.
RACY_NS = 1_000_000_000


@dataclass
class IndexResult:
    new: int = 0
    updated: int = 0  # a partial that grew, or a complete file that changed
    completed: int = 0  # a partial row turned complete
    unchanged: int = 0
    junk: int = 0
    corrupt: int = 0  # complete segments whose content no longer matches their sha256
    vanished: int = 0  # rows whose file left the local archive
    timelines: int = 0  # timeline rows created or changed from .history files
    skipped: int = 0  # another indexer changed the row first
    hashed: int = 0  # files whose sha256 was computed
    dumped: int = 0  # pg_waldump runs
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        text = (f"{self.new} new, {self.updated} updated, {self.completed} completed, "
                f"{self.unchanged} unchanged, {self.junk} junk, {self.corrupt} corrupt, {self.vanished} vanished; "
                f"{self.hashed} hashed, {self.dumped} read with pg_waldump in {self.seconds:.2f} s")
        return text + (f"; {len(self.errors)} error(s)" if self.errors else "")


@dataclass(frozen=True)
class _File:
    name: str
    path: Path
    size: int
    mtime_ns: int


@dataclass
class _Row:
    """What indexing a new or changed file needs of its row (loaded only for those files)."""

    id: int
    timeline: int
    segno: int
    name: str
    is_partial: bool
    size: int
    mtime_ns: int
    scanned_to: int
    start_lsn: int
    end_lsn: int
    in_local_archive: bool


def index_archive(archive_dir: Path | None = None, reporter: Reporter | None = None) -> IndexResult:
    """One pass over the archive; returns what it did."""
    began = time.monotonic()
    archive = Path(archive_dir or Layout.current().archive)
    if not archive.is_dir():
        raise PitrError(f"WAL archive {archive} does not exist: run `python manage.py fleet up` "
                        "or set PITR_WAL_ARCHIVE")
    if reporter:
        reporter.step("listing the WAL archive")
    # Rows first, listing second: files only move forward (partial -> complete), so a row
    # can be older than the listing but never newer, even with another indexer running.
    rows = _load_rows()
    files = _list(archive)
    result = IndexResult()
    pass_ = _Pass(archive, files, rows, result, reporter)
    pass_.run()
    result.seconds = round(time.monotonic() - began, 3)
    if reporter:
        reporter.step("")
    log.debug("index pass over %s: %s", archive, result)
    return result


# What the fast path compares, per file name: (id, is_partial, size, mtime_ns, in_local_archive, unfinished).
# Plain tuples from raw SQL: this runs every few seconds over every row; model instances cost 10x.
_Brief = tuple[int, bool, int, int, bool, bool]
_ROW_FIELDS = ("id", "timeline", "segno", "name", "is_partial", "size", "mtime_ns", "scanned_to", "start_lsn",
               "end_lsn", "in_local_archive")


def _load_rows() -> dict[str, _Brief]:
    table = WalSegment._meta.db_table
    with connection.cursor() as cur:
        cur.execute(f"SELECT name, is_partial, id, size, mtime_ns, in_local_archive, scanned_to < end_lsn "
                    f"FROM {table} WHERE server_id = %s", [servers.current_id()])
        return {(name + ".partial" if partial else name): (id_, bool(partial), size, mtime, bool(local),
                                                           bool(unfinished))
                for name, partial, id_, size, mtime, local, unfinished in cur.fetchall()}


def _full_row(row_id: int) -> _Row | None:
    values = WalSegment.objects.filter(pk=row_id).values_list(*_ROW_FIELDS).first()
    return _Row(*values) if values else None


def _list(archive: Path) -> dict[str, tuple[str, int, int]]:
    """name -> (path, size, mtime_ns) of every regular file (strings, not Paths: 100k of them)."""
    files = {}
    with os.scandir(archive) as entries:
        for entry in entries:
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except FileNotFoundError:  # renamed or removed while we listed
                continue
            files[entry.name] = (entry.path, st.st_size, st.st_mtime_ns)
    return files


def _warn_junk(name: str, why: str) -> None:
    if name not in _warned:
        _warned.add(name)
        log.warning("ignoring %s in the WAL archive: %s", name, why)


def sha256_file(path: Path) -> str:
    return st.sha256_file(path)[1]


class _Pass:
    def __init__(self, archive: Path, files: dict[str, tuple[str, int, int]], rows: dict[str, _Brief],
                 result: IndexResult, reporter: Reporter | None):
        self.archive, self.files, self.rows, self.result, self.reporter = archive, files, rows, result, reporter
        self._seg_size: int | None = None

    def file(self, name: str) -> _File | None:
        entry = self.files.get(name)
        return _File(name, Path(entry[0]), entry[1], entry[2]) if entry else None

    @property
    def seg_size(self) -> int:
        if self._seg_size is None:
            self._seg_size = catalog.segment_size(self.archive)
        return self._seg_size

    def run(self) -> None:
        work: list[tuple[walnames.WalFile, _File]] = []
        wal: walnames.WalFile | None
        for name, (_, size, mtime_ns) in self.files.items():
            row = self.rows.get(name)
            if row is not None and self._unchanged(row, size, mtime_ns):
                self.result.unchanged += 1
                if row[5] and not row[1]:  # complete, but its last record may continue in a successor
                    wal = walnames.parse_wal_name(name, self.seg_size)
                    if self._successor(wal) is not None:
                        listed = self.file(name)
                        assert listed is not None  # name is in self.files
                        work.append((wal, listed))
                continue
            wal = self._parse(name)
            if wal is None:
                continue
            f = self.file(name)
            assert f is not None  # name is in self.files
            if wal.kind == "history":
                self._history(f)
            elif (wal.kind == "partial" and wal.segno is not None
                  and walnames.segment_name(wal.timeline, wal.segno, self.seg_size) in self.files):
                continue  # both names at once: the complete file is the truth
            elif wal.kind == "segment" and size != self.seg_size:
                self.result.junk += 1  # a WAL-like name on a file that cannot be a segment
                _warn_junk(name, f"{size} bytes, not a {self.seg_size}-byte WAL segment")
            elif wal.kind in ("segment", "partial"):
                work.append((wal, f))
            # .backup history files hold no WAL of their own: nothing to catalog.
        self._mark_vanished()
        self._forget_histories()
        if work:
            self._ensure_timelines({wal.timeline for wal, _ in work})
        work.sort(key=lambda item: (item[0].timeline, item[0].segno))
        if self.reporter:
            self.reporter.step("indexing new and changed WAL files")
        for done, (wal, f) in enumerate(work, start=1):
            try:
                self._segment(wal, f)
            except FileNotFoundError:
                pass  # renamed (partial -> complete) or removed since the listing: the next pass sees it
            except PitrError as exc:
                self.result.errors.append(f"{f.name}: {exc}")
                log.warning("could not index %s: %s", f.name, exc)
            if self.reporter:
                self.reporter.progress(done, len(work))

    # --- classification ---------------------------------------------------
    def _unchanged(self, row: _Brief, size: int, mtime_ns: int) -> bool:
        row_id, partial, row_size, row_mtime, local, _ = row
        if not local:
            return False
        if partial:  # its size on disk is always the segment size (padded): mtime tells
            return mtime_ns == row_mtime and not self._racy(row_id, mtime_ns)
        return size == row_size and mtime_ns == row_mtime

    def _racy(self, row_id: int, mtime_ns: int) -> bool:
        indexed_at = WalSegment.objects.filter(pk=row_id).values_list("indexed_at", flat=True).first()
        return indexed_at is None or _ns(indexed_at) <= mtime_ns + RACY_NS

    def _parse(self, name: str) -> walnames.WalFile | None:
        try:
            return walnames.parse_wal_name(name, self.seg_size)
        except walnames.WalNameError as exc:
            self.result.junk += 1
            _warn_junk(name, str(exc))
            return None

    def _successor(self, seg: _Row | walnames.WalFile) -> _File | None:
        """The next segment's file on the same timeline, complete or partial."""
        assert seg.segno is not None  # a segment or a partial, never a history file
        name = walnames.segment_name(seg.timeline, seg.segno + 1, self.seg_size)
        return self.file(name) or self.file(name + ".partial")

    # --- timelines -----------------------------------------------------------
    def _ensure_timelines(self, tlis: set[int]) -> None:
        missing = tlis - set(Timeline.objects.filter(tli__in=tlis).values_list("tli", flat=True))
        if missing:
            Timeline.objects.bulk_create([Timeline(tli=t) for t in sorted(missing)], ignore_conflicts=True)

    def _inconsistent(self, tli: int, last: walnames.HistoryEntry) -> str | None:
        """Why a history file cannot describe this archive's WAL, or None: it must branch from an older
        timeline that the catalog or the archive holds, at a point inside that timeline's WAL."""
        parent = last.parent_timeline
        if parent >= tli:
            return f"it branches from timeline {parent}, not an older one"
        prefix = f"{parent:08X}"
        held = (walnames.parse_wal_name(name[:24], self.seg_size) for name in self.files
                if name.startswith(prefix) and len(name) >= 24 and walnames.is_wal_name(name[:24], self.seg_size))
        ends = [walnames.segment_end_lsn(w.segno, self.seg_size) for w in held if w.segno is not None]
        ends += [e for e in WalSegment.objects.filter(timeline=parent).aggregate(e=Max("end_lsn")).values() if e]
        if not ends and f"{prefix}.history" not in self.files and not Timeline.objects.filter(tli=parent).exists():
            return f"its parent timeline {parent} is not in the catalog"
        if ends and last.switch_lsn > max(ends):
            return (f"it switches at {walnames.format_lsn(last.switch_lsn)}, after the end of timeline {parent}'s "
                    f"WAL held here ({walnames.format_lsn(max(ends))})")
        return None

    def _history(self, f: _File) -> None:
        wal = walnames.parse_wal_name(f.name, self.seg_size)
        try:
            content = f.path.read_bytes()
        except FileNotFoundError:
            return
        digest = hashlib.sha256(content).hexdigest()
        if Timeline.objects.filter(tli=wal.timeline, history_sha256=digest).exists():
            return
        try:
            text = content.decode()
            entries = walnames.parse_history(text)
        except (UnicodeDecodeError, walnames.WalNameError) as exc:
            self.result.junk += 1
            _warn_junk(f.name, f"not a valid timeline history file ({exc})")
            return
        last = entries[-1] if entries else None
        problem = self._inconsistent(wal.timeline, last) if last is not None else None
        if problem:
            self.result.junk += 1
            _warn_junk(f.name, f"{problem}: not a history of the WAL captured here")
            return
        defaults = dict(parent_tli=last.parent_timeline if last else None,
                        switch_lsn=last.switch_lsn if last else None, history=text, history_sha256=digest)
        for _ in range(2):  # a second indexer may create the row between our get and our insert
            try:
                with transaction.atomic():
                    Timeline.objects.update_or_create(tli=wal.timeline, defaults=defaults)
                break
            except IntegrityError:
                continue
        self.result.timelines += 1

    # --- segments --------------------------------------------------------------
    def _segment(self, wal: walnames.WalFile, f: _File) -> None:
        assert wal.segno is not None  # a segment or a partial
        name = walnames.segment_name(wal.timeline, wal.segno, self.seg_size)
        brief = self.rows.get(name) or self.rows.get(name + ".partial")
        row = _full_row(brief[0]) if brief else None
        partial = wal.kind == "partial"
        if row is None:
            self._create(wal, f)
        elif not row.in_local_archive and not partial and not row.is_partial and f.size == row.size:
            self._returned(row, f)
        elif row.is_partial and partial:
            self._grow(row, f)
        elif row.is_partial and not partial:
            self._complete(row, f)
        elif not partial and f.size == row.size and f.mtime_ns == row.mtime_ns:
            self._finish(row, f)
        elif partial and (self.archive / row.name).exists():
            return  # renamed to complete after our listing; the next pass takes it
        else:
            self._replace(row, wal, f)

    def _dump(self, seg: _Row | walnames.WalFile, f: _File, start: int | None) -> waldump.DumpResult:
        assert seg.segno is not None  # a segment or a partial
        successor = self._successor(seg)
        self.result.dumped += 1
        return waldump.read_commits(f.path, seg.timeline, seg.segno, self.seg_size, start=start,
                                    successor=successor.path if successor else None)

    def _hash(self, f: _File) -> str:
        self.result.hashed += 1
        return sha256_file(f.path)

    def _create(self, wal: walnames.WalFile, f: _File) -> None:
        assert wal.segno is not None  # a segment or a partial
        partial = wal.kind == "partial"
        start = wal.start_lsn(self.seg_size)
        sha = "" if partial else self._hash(f)
        dump = self._dump(wal, f, start)
        fields = _commit_fields(dump, None)
        # A complete segment is read for good once its successor was there to finish a
        # crossing record (a damaged record is then not retried every pass).
        scanned = start + self.seg_size if not partial and (dump.reached_end or self._successor(wal)) \
            else dump.scanned_to
        fields.update(scanned_to=scanned, size=(scanned - start) if partial else f.size, mtime_ns=f.mtime_ns)
        seg = WalSegment(timeline=wal.timeline, segno=wal.segno,
                         name=walnames.segment_name(wal.timeline, wal.segno, self.seg_size),
                         start_lsn=start, end_lsn=start + self.seg_size, is_partial=partial, sha256=sha,
                         in_local_archive=True, **fields)
        try:
            with transaction.atomic():
                seg.save(force_insert=True)
        except IntegrityError:
            self.result.skipped += 1  # another indexer created it from the same file
            return
        self._restore_points(seg.pk, wal.timeline, dump)
        self.result.new += 1

    def _update(self, row: _Row, fields: dict) -> bool:
        """Conditional UPDATE: only if the row is still as this pass read it."""
        fields.setdefault("indexed_at", timezone.now())
        n = WalSegment.objects.filter(pk=row.id, is_partial=row.is_partial, scanned_to=row.scanned_to,
                                      mtime_ns=row.mtime_ns).update(**fields)
        if n != 1:
            self.result.skipped += 1
        return n == 1

    def _grow(self, row: _Row, f: _File) -> None:
        dump = self._dump(row, f, row.scanned_to)
        fields = _commit_fields(dump, row)
        fields.update(scanned_to=dump.scanned_to, size=dump.scanned_to - row.start_lsn, mtime_ns=f.mtime_ns,
                      in_local_archive=True)
        if self._update(row, fields):
            self._restore_points(row.id, row.timeline, dump)
            grew = dump.scanned_to != row.scanned_to or row.mtime_ns != f.mtime_ns
            if grew:
                self.result.updated += 1
            else:
                self.result.unchanged += 1

    def _complete(self, row: _Row, f: _File) -> None:
        sha = self._hash(f)
        dump = self._dump(row, f, row.scanned_to)
        fields = _commit_fields(dump, row)
        fields.update(self._complete_scan(row, dump))
        fields.update(is_partial=False, sha256=sha, size=f.size, mtime_ns=f.mtime_ns, in_local_archive=True)
        if self._update(row, fields):
            self._restore_points(row.id, row.timeline, dump)
            self.result.completed += 1

    def _complete_scan(self, row: _Row, dump: waldump.DumpResult) -> dict:
        done = dump.reached_end or self._successor(row) is not None
        return {"scanned_to": row.end_lsn if done else dump.scanned_to}

    def _finish(self, row: _Row, f: _File) -> None:
        """A complete segment whose last record may continue into a successor that has now arrived."""
        dump = self._dump(row, f, row.scanned_to)
        fields = _commit_fields(dump, row)
        fields.update(scanned_to=row.end_lsn)
        if self._update(row, fields):
            self._restore_points(row.id, row.timeline, dump)

    def _returned(self, row: _Row, f: _File) -> None:
        """A file that had left the local archive is back: check it is the same one."""
        sha = self._hash(f)
        current = WalSegment.objects.filter(pk=row.id).values_list("sha256", flat=True).first()
        if current == sha:
            if self._update(row, dict(in_local_archive=True, mtime_ns=f.mtime_ns)):
                self.result.updated += 1
        else:
            self._replace(row, walnames.parse_wal_name(f.name, self.seg_size), f, sha)

    def _replace(self, row: _Row, wal: walnames.WalFile, f: _File, sha: str | None = None) -> None:
        """The file under a known name changed (or went back to partial): index it from scratch."""
        partial = wal.kind == "partial"
        start = row.start_lsn
        if not partial and sha is None:
            sha = self._hash(f)
            current = WalSegment.objects.filter(pk=row.id).values_list("sha256", flat=True).first()
            if current == sha:  # touched or copied back, same content
                if self._update(row, dict(mtime_ns=f.mtime_ns, in_local_archive=True)):
                    self.result.unchanged += 1
                return
            if not row.is_partial and current:
                self._corrupt(row, f, current, sha)
                return
        log.warning("%s changed on disk since it was indexed: indexing it again", f.name)
        dump = self._dump(row, f, start)
        fields = _commit_fields(dump, None)
        scan = dump.scanned_to if partial else self._complete_scan(row, dump)["scanned_to"]
        fields.update(is_partial=partial, sha256="" if partial else sha, scanned_to=scan,
                      size=(scan - start) if partial else f.size, mtime_ns=f.mtime_ns, in_local_archive=True)
        if self._update(row, fields):
            RestorePoint.objects.filter(segment_id=row.id).delete()
            self._restore_points(row.id, row.timeline, dump)
            self.result.updated += 1

    def _corrupt(self, row: _Row, f: _File, expected: str, found: str) -> None:
        """A complete segment's content changed: the cataloged sha256 stays the truth."""
        detail = f"sha256 {found[:12]}... on disk, {expected[:12]}... when indexed (size {f.size})"
        if self._update(row, dict(mtime_ns=f.mtime_ns, corrupt_at=timezone.now(), corrupt_detail=detail)):
            self.result.corrupt += 1
            log.warning("%s is corrupt: %s; the local copy is no longer used", f.name, detail)

    def _mark_vanished(self) -> None:
        gone = {name: row[0] for name, row in self.rows.items()
                if row[4] and name not in self.files and not self._other_name_present(name)}
        ids = list(gone.values())
        for i in range(0, len(ids), 500):
            self.result.vanished += WalSegment.objects.filter(pk__in=ids[i:i + 500], in_local_archive=True).update(
                in_local_archive=False, indexed_at=timezone.now())
        if gone:  # once per row: from now on the row says so and is skipped
            names = sorted(gone)
            more = f" and {len(names) - 5} more" if len(names) > 5 else ""
            log.warning("no longer in the local archive: %s%s", ", ".join(names[:5]), more)

    def _forget_histories(self) -> None:
        """A timeline row from a history file that is gone, with no WAL and no backup, is no timeline."""
        stray = [t for t in Timeline.objects.exclude(history_sha256="").values_list("tli", flat=True)
                 if f"{t:08X}.history" not in self.files]
        if not stray:
            return
        used = set(WalSegment.objects.filter(timeline__in=stray).order_by().values_list("timeline", flat=True)
                   .distinct()) | set(BaseBackup.objects.filter(timeline__in=stray).values_list("timeline", flat=True))
        gone = [t for t in stray if t not in used]
        if gone and Timeline.objects.filter(tli__in=gone).delete()[0]:
            log.warning("timeline history file(s) gone, timeline(s) without WAL forgotten: %s",
                        ", ".join(map(str, gone)))

    def _other_name_present(self, name: str) -> bool:
        # partial -> complete rename between the row load and the listing
        base = name.removesuffix(".partial")
        return base in self.files or (base + ".partial") in self.files

    def _restore_points(self, segment_id: int, timeline: int, dump: waldump.DumpResult) -> None:
        if dump.restore_points:
            RestorePoint.objects.bulk_create(
                [RestorePoint(name=p.name[:64], timeline=timeline, lsn=p.lsn, segment_id=segment_id)
                 for p in dump.restore_points], ignore_conflicts=True)


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


def _commit_fields(dump: waldump.DumpResult, row: _Row | None) -> dict:
    """first/last commit and count after adding this dump's commits to what the row had."""
    if row is None:
        first = last = last_lsn = None
        count = 0
    else:
        first, last, last_lsn, count = (WalSegment.objects.filter(pk=row.id).values_list(
            "first_commit_at", "last_commit_at", "last_commit_lsn", "commit_count").first() or (None, None, None, 0))
    for c in dump.commits:
        first = c.at if first is None or c.at < first else first
        last = c.at if last is None or c.at > last else last
        last_lsn = c.lsn if last_lsn is None or c.lsn > last_lsn else last_lsn
    return dict(first_commit_at=first, last_commit_at=last, last_commit_lsn=last_lsn,
                commit_count=count + len(dump.commits))
