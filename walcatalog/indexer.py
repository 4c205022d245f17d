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

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.db import IntegrityError, transaction
from django.utils import timezone

from fleet import servers
from fleet.layout import Layout
from pitrsite import locks
from pitrsite.errors import PitrError
from pitrsite.jobs import Reporter
from pitrsite.output import Result
from walcatalog import catalog, histories, waldump, walnames
from walcatalog import storage as st
from walcatalog.cluster import OtherCluster, check_cluster
from walcatalog.indexrows import Brief, File, Row, commit_fields, full_row, list_archive, load_rows, ns, warn_junk
from walcatalog.models import RestorePoint, WalSegment

log = logging.getLogger(__name__)

# A partial whose mtime is this close to its last scan may have been written again
# within the same mtime tick; it is read again until its last scan is clearly later.
RACY_NS = 1_000_000_000


@dataclass
class IndexResult(Result):
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
    other_cluster: list[str] = field(default_factory=list)  # WAL refused: another system identifier

    def __str__(self) -> str:
        text = (f"{self.new} new, {self.updated} updated, {self.completed} completed, "
                f"{self.unchanged} unchanged, {self.junk} junk, {self.corrupt} corrupt, {self.vanished} vanished; "
                f"{self.hashed} hashed, {self.dumped} read with pg_waldump in {self.seconds:.2f} s")
        return text + (f"; {len(self.errors)} error(s)" if self.errors else "")


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
    rows = load_rows()
    files = list_archive(archive)
    result = IndexResult()
    pass_ = _Pass(archive, files, rows, result, reporter)
    pass_.run()
    result.seconds = round(time.monotonic() - began, 3)
    if reporter:
        reporter.step("")
    log.debug("index pass over %s: %s", archive, result)
    return result


def scheduled_pass() -> IndexResult:
    """Beat's pass: under the server's index lock, so a slow pass makes the next tick skip (LockBusy).
    index_archive itself takes none: passes side by side are safe (a user's index_wal, the rebuild's scratch)."""
    with servers.lock(locks.INDEX).held():
        return index_archive()


class _Pass:
    def __init__(self, archive: Path, files: dict[str, tuple[str, int, int]], rows: dict[str, Brief],
                 result: IndexResult, reporter: Reporter | None):
        self.archive, self.files, self.rows, self.result, self.reporter = archive, files, rows, result, reporter
        self._seg_size: int | None = None

    def file(self, name: str) -> File | None:
        entry = self.files.get(name)
        return File(name, Path(entry[0]), entry[1], entry[2]) if entry else None

    @property
    def seg_size(self) -> int:
        if self._seg_size is None:
            self._seg_size = catalog.segment_size(self.archive)
        return self._seg_size

    def run(self) -> None:
        work: list[tuple[walnames.WalFile, File]] = []
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
                histories.index_history(f, self.files, self.seg_size, self.result)
            elif (wal.kind == "partial" and wal.segno is not None
                  and walnames.segment_name(wal.timeline, wal.segno, self.seg_size) in self.files):
                continue  # both names at once: the complete file is the truth
            elif wal.kind == "segment" and size != self.seg_size:
                self.result.junk += 1  # a WAL-like name on a file that cannot be a segment
                warn_junk(name, f"{size} bytes, not a {self.seg_size}-byte WAL segment")
            elif wal.kind in ("segment", "partial"):
                work.append((wal, f))
            # .backup history files hold no WAL of their own: nothing to catalog.
        self._mark_vanished()
        histories.forget_histories(self.files)
        if work:
            histories.ensure_timelines({wal.timeline for wal, _ in work})
        work.sort(key=lambda item: (item[0].timeline, item[0].segno))
        if self.reporter:
            self.reporter.step("indexing new and changed WAL files")
        for done, (wal, f) in enumerate(work, start=1):
            try:
                self._segment(wal, f)
            except FileNotFoundError:
                pass  # renamed (partial -> complete) or removed since the listing: the next pass sees it
            except OtherCluster as exc:
                self.result.other_cluster.append(f"{f.name}: {exc}")
                log.error("refused %s: %s", f.name, exc)
            except PitrError as exc:
                self.result.errors.append(f"{f.name}: {exc}")
                log.warning("could not index %s: %s", f.name, exc)
            if self.reporter:
                self.reporter.progress(done, len(work))

    # --- classification ---------------------------------------------------
    def _unchanged(self, row: Brief, size: int, mtime_ns: int) -> bool:
        row_id, partial, row_size, row_mtime, local, _ = row
        if not local:
            return False
        if partial:  # its size on disk is always the segment size (padded): mtime tells
            return mtime_ns == row_mtime and not self._racy(row_id, mtime_ns)
        return size == row_size and mtime_ns == row_mtime

    def _racy(self, row_id: int, mtime_ns: int) -> bool:
        indexed_at = WalSegment.objects.filter(pk=row_id).values_list("indexed_at", flat=True).first()
        return indexed_at is None or ns(indexed_at) <= mtime_ns + RACY_NS

    def _parse(self, name: str) -> walnames.WalFile | None:
        try:
            return walnames.parse_wal_name(name, self.seg_size)
        except walnames.WalNameError as exc:
            self.result.junk += 1
            warn_junk(name, str(exc))
            return None

    def _successor(self, seg: Row | walnames.WalFile) -> File | None:
        """The next segment's file on the same timeline, complete or partial."""
        assert seg.segno is not None  # a segment or a partial, never a history file
        name = walnames.segment_name(seg.timeline, seg.segno + 1, self.seg_size)
        return self.file(name) or self.file(name + ".partial")

    # --- segments --------------------------------------------------------------
    def _segment(self, wal: walnames.WalFile, f: File) -> None:
        assert wal.segno is not None  # a segment or a partial
        check_cluster(f.path)  # before any row is made or "re-indexed" from another cluster's bytes
        name = walnames.segment_name(wal.timeline, wal.segno, self.seg_size)
        brief = self.rows.get(name) or self.rows.get(name + ".partial")
        row = full_row(brief[0]) if brief else None
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

    def _dump(self, seg: Row | walnames.WalFile, f: File, start: int | None) -> waldump.DumpResult:
        assert seg.segno is not None  # a segment or a partial
        successor = self._successor(seg)
        self.result.dumped += 1
        return waldump.read_commits(f.path, seg.timeline, seg.segno, self.seg_size, start=start,
                                    successor=successor.path if successor else None)

    def _hash(self, f: File) -> str:
        self.result.hashed += 1
        return st.sha256_file(f.path)[1]

    def _create(self, wal: walnames.WalFile, f: File) -> None:
        assert wal.segno is not None  # a segment or a partial
        partial = wal.kind == "partial"
        start = wal.start_lsn(self.seg_size)
        sha = "" if partial else self._hash(f)
        dump = self._dump(wal, f, start)
        fields = commit_fields(dump, None)
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

    def _update(self, row: Row, fields: dict) -> bool:
        """Conditional UPDATE: only if the row is still as this pass read it."""
        fields.setdefault("indexed_at", timezone.now())
        n = WalSegment.objects.filter(pk=row.id, is_partial=row.is_partial, scanned_to=row.scanned_to,
                                      mtime_ns=row.mtime_ns).update(**fields)
        if n != 1:
            self.result.skipped += 1
        return n == 1

    def _grow(self, row: Row, f: File) -> None:
        dump = self._dump(row, f, row.scanned_to)
        fields = commit_fields(dump, row)
        fields.update(scanned_to=dump.scanned_to, size=dump.scanned_to - row.start_lsn, mtime_ns=f.mtime_ns,
                      in_local_archive=True)
        if self._update(row, fields):
            self._restore_points(row.id, row.timeline, dump)
            grew = dump.scanned_to != row.scanned_to or row.mtime_ns != f.mtime_ns
            if grew:
                self.result.updated += 1
            else:
                self.result.unchanged += 1

    def _complete(self, row: Row, f: File) -> None:
        sha = self._hash(f)
        dump = self._dump(row, f, row.scanned_to)
        fields = commit_fields(dump, row)
        fields.update(self._complete_scan(row, dump))
        fields.update(is_partial=False, sha256=sha, size=f.size, mtime_ns=f.mtime_ns, in_local_archive=True)
        if self._update(row, fields):
            self._restore_points(row.id, row.timeline, dump)
            self.result.completed += 1

    def _complete_scan(self, row: Row, dump: waldump.DumpResult) -> dict:
        done = dump.reached_end or self._successor(row) is not None
        return {"scanned_to": row.end_lsn if done else dump.scanned_to}

    def _finish(self, row: Row, f: File) -> None:
        """A complete segment whose last record may continue into a successor that has now arrived."""
        dump = self._dump(row, f, row.scanned_to)
        fields = commit_fields(dump, row)
        fields.update(scanned_to=row.end_lsn)
        if self._update(row, fields):
            self._restore_points(row.id, row.timeline, dump)

    def _returned(self, row: Row, f: File) -> None:
        """A file that had left the local archive is back: check it is the same one."""
        sha = self._hash(f)
        current = WalSegment.objects.filter(pk=row.id).values_list("sha256", flat=True).first()
        if current == sha:
            if self._update(row, dict(in_local_archive=True, mtime_ns=f.mtime_ns)):
                self.result.updated += 1
        else:
            self._replace(row, walnames.parse_wal_name(f.name, self.seg_size), f, sha)

    def _replace(self, row: Row, wal: walnames.WalFile, f: File, sha: str | None = None) -> None:
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
        fields = commit_fields(dump, None)
        scan = dump.scanned_to if partial else self._complete_scan(row, dump)["scanned_to"]
        fields.update(is_partial=partial, sha256="" if partial else sha, scanned_to=scan,
                      size=(scan - start) if partial else f.size, mtime_ns=f.mtime_ns, in_local_archive=True)
        if self._update(row, fields):
            RestorePoint.objects.filter(segment_id=row.id).delete()
            self._restore_points(row.id, row.timeline, dump)
            self.result.updated += 1

    def _corrupt(self, row: Row, f: File, expected: str, found: str) -> None:
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

    def _other_name_present(self, name: str) -> bool:
        # partial -> complete rename between the row load and the listing
        base = name.removesuffix(".partial")
        return base in self.files or (base + ".partial") in self.files

    def _restore_points(self, segment_id: int, timeline: int, dump: waldump.DumpResult) -> None:
        if dump.restore_points:
            RestorePoint.objects.bulk_create(
                [RestorePoint(name=p.name[:64], timeline=timeline, lsn=p.lsn, segment_id=segment_id)
                 for p in dump.restore_points], ignore_conflicts=True)
