"""Copy what the catalog holds to the archive storage, verified.

One pass (beat every PITR_UPLOAD_INTERVAL s, or ``manage.py upload``)
uploads everything that has no verified copy yet:

- every complete, indexed segment of the local archive;
- a snapshot of the growing ``.partial`` (at most every PITR_PARTIAL_UPLOAD_INTERVAL s): its valid prefix,
  under its own key (storage.partial_key), replaced as it grows and deleted once the complete segment has a
  verified copy. So a lost machine takes at most that interval (plus the index and upload intervals) of
  commits with it, instead of everything since the last segment switch;
- every timeline ``.history`` (from the catalog row, which holds its text);
- every verified base backup: its files, then a JSON descriptor written last,
  so a descriptor in storage means the whole backup is there.

Each object is read back and hashed after upload (the simple, honest check
that works the same on every backend; it costs one download per upload, see
bench/storage.py) and only then recorded as verified in StorageCopy. A pass
killed mid-way leaves objects without a verified row: the next pass uploads
them again, overwriting whatever half was written.

A snapshot's valid length is where the indexer's pg_waldump read of the .partial stopped: the end of the last
complete WAL record (WalSegment.scanned_to). Not the flush position pg_receivewal reports to the server: that
is not kept per file, it may end inside a record, and it is not what the catalog's commit times were read
from. Taken from the same row read, the length and the snapshot's newest commit always agree. The bytes before
it never change (pg_receivewal only appends), so the prefix can be read while the file grows. A restore pads
the snapshot back to the segment size with zeros, where replay ends as at the end of a local .partial.

Transfers run in a bounded thread pool (PITR_UPLOAD_PARALLEL) with retries
and backoff; every database write stays in the calling thread.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import Exists, Max, OuterRef
from django.utils import timezone

from fleet import servers
from fleet.layout import Layout
from pitrsite import locks
from pitrsite.errors import first_line
from pitrsite.jobs import Reporter
from pitrsite.output import Result
from walcatalog import storage as st
from walcatalog.backups import backup_dir, restorable_backups
from walcatalog.models import StorageCopy, Timeline, WalSegment
from walcatalog.serializers import backup_dict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One object to upload, and the catalog row it belongs to."""

    kind: str
    key: str
    source: Path | bytes
    sha256: str = ""  # what the catalog says the bytes are, when it knows
    segment_id: int | None = None
    backup_id: int | None = None
    last_commit_at: datetime | None = None  # a .partial snapshot's newest commit
    last_commit_lsn: int | None = None

    @property
    def name(self) -> str:
        return self.key


@dataclass
class UploadResult(Result):
    storage: str = ""
    pending: int = 0
    uploaded: int = 0
    bytes: int = 0
    wal: int = 0
    history: int = 0
    backup_files: int = 0
    descriptors: int = 0
    partials: int = 0  # .partial snapshots uploaded
    partials_dropped: int = 0  # snapshots deleted: their complete segment has a verified copy now
    upload_seconds: float = 0.0  # summed over transfers
    verify_seconds: float = 0.0  # reading back and hashing, summed over transfers
    seconds: float = 0.0  # wall clock of the pass
    errors: list[str] = field(default_factory=list)


    def __str__(self) -> str:
        text = (f"{self.uploaded} of {self.pending} object(s) uploaded and verified to {self.storage} "
                f"({self.wal} WAL, {self.history} history, {self.backup_files} backup files, "
                f"{self.descriptors} descriptors, {self.partials} .partial snapshot(s); {self.bytes:,} bytes "
                f"in {self.seconds:.2f} s)")
        return text + (f"; {len(self.errors)} failed" if self.errors else "")


def upload_pass(reporter: Reporter | None = None, workers: int | None = None,
                storage_name: str = st.STORAGE_NAME) -> UploadResult:
    """One pass; at most one runs at a time per data home."""
    with servers.lock(locks.UPLOAD).held():
        st.probe(storage_name)  # a wrong endpoint, missing bucket or refused key: one line, before any item
        return _Pass(storage_name, workers or settings.PITR_UPLOAD_PARALLEL, reporter).run()


def wal_to_upload(storage_name: str = st.STORAGE_NAME):
    """Complete, indexed local segments with no verified copy in the storage: what the next pass uploads
    (and the backlog the overview shows)."""
    copied = Exists(StorageCopy.verified(storage_name).filter(kind=StorageCopy.Kind.WAL, segment=OuterRef("pk")))
    return WalSegment.objects.filter(is_partial=False, in_local_archive=True).exclude(sha256="").filter(~copied)


def storage_recovery_point(storage_name: str = st.STORAGE_NAME):
    """The newest commit held in the storage (in a verified segment copy or .partial snapshot): what a restore
    from storage alone can reach, so its age bounds the data a lost machine takes with it. None when storage
    holds no commit."""
    copies = StorageCopy.verified(storage_name)
    # A snapshot counts with its own newest commit, not its row's: that one grows with the local file.
    copied = Exists(copies.exclude(kind=StorageCopy.Kind.PARTIAL).filter(segment=OuterRef("pk")))
    found = [WalSegment.objects.filter(copied).aggregate(at=Max("last_commit_at"))["at"],
             copies.filter(kind=StorageCopy.Kind.PARTIAL).aggregate(at=Max("last_commit_at"))["at"]]
    return max((at for at in found if at is not None), default=None)


def read_prefix(path: Path, length: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(length)


class _Pass:
    def __init__(self, storage_name: str, workers: int, reporter: Reporter | None):
        self.name, self.workers, self.reporter = storage_name, workers, reporter
        self.storage = st.get_storage(storage_name)
        self.result = UploadResult(storage=st.describe(storage_name))
        self.done = 0

    def run(self) -> UploadResult:
        began = time.monotonic()
        if self.reporter:
            self.reporter.step("uploading to storage")
        items = self.wal_items() + self.history_items() + self.backup_file_items() + self.partial_items()
        self.result.pending = len(items)
        self.transfer(items)
        self.drop_superseded_partials()
        descriptors = self.descriptor_items()  # only backups whose files are all verified by now
        self.result.pending += len(descriptors)
        self.transfer(descriptors)
        self.result.seconds = round(time.monotonic() - began, 3)
        self.result.upload_seconds = round(self.result.upload_seconds, 3)
        self.result.verify_seconds = round(self.result.verify_seconds, 3)
        if self.reporter:
            self.reporter.step("")
        return self.result

    # --- what needs uploading ---------------------------------------------------------------
    def wal_items(self) -> list[Item]:
        archive = Layout.current().archive
        rows = wal_to_upload(self.name).order_by("timeline", "segno").values_list("pk", "name", "sha256")
        return [Item(StorageCopy.Kind.WAL, st.wal_key(name), archive / name, sha, segment_id=pk)
                for pk, name, sha in rows]

    def partial_items(self) -> list[Item]:
        """A snapshot of each growing .partial whose last one is older than PITR_PARTIAL_UPLOAD_INTERVAL and
        shorter than what the indexer has read since (the first one at once)."""
        interval = settings.PITR_PARTIAL_UPLOAD_INTERVAL
        if interval <= 0:
            return []
        archive = Layout.current().archive
        held = {c.segment_id: c for c in StorageCopy.verified(self.name).filter(kind=StorageCopy.Kind.PARTIAL)}
        due = timezone.now() - timedelta(seconds=interval)
        rows = WalSegment.objects.filter(is_partial=True, in_local_archive=True, corrupt_at__isnull=True).values_list(
            "pk", "name", "start_lsn", "scanned_to", "last_commit_at", "last_commit_lsn")
        items = []
        for pk, name, start, scanned_to, commit_at, commit_lsn in rows:
            length, last = scanned_to - start, held.get(pk)
            if length <= 0 or last is not None and (last.size >= length or last.uploaded_at > due):
                continue
            try:
                data = read_prefix(archive / f"{name}.partial", length)
            except FileNotFoundError:
                continue  # completed since the index pass: the complete segment goes up with the next pass
            if len(data) == length:
                items.append(Item(StorageCopy.Kind.PARTIAL, st.partial_key(name), data, segment_id=pk,
                                  last_commit_at=commit_at, last_commit_lsn=commit_lsn))
        return items

    def drop_superseded_partials(self) -> None:
        """Delete the snapshots whose complete segment has a verified copy: the object first, then its row."""
        copies = StorageCopy.verified(self.name)
        complete = Exists(copies.filter(kind=StorageCopy.Kind.WAL, segment=OuterRef("segment")))
        for copy in copies.filter(kind=StorageCopy.Kind.PARTIAL).filter(complete):
            try:
                st.with_retries(functools.partial(self.storage.delete, copy.key), f"deleting {copy.key}",
                                attempts=settings.PITR_STORAGE_RETRIES)
            except Exception as exc:  # noqa: BLE001 - reported with the pass; the next one tries again
                self.result.errors.append(f"{copy.key}: {first_line(st.as_storage_error(exc, self.name))}")
                continue
            copy.delete()
            self.result.partials_dropped += 1

    def history_items(self) -> list[Item]:
        keys = set(StorageCopy.verified(self.name).filter(kind=StorageCopy.Kind.HISTORY).values_list("key", flat=True))
        return [Item(StorageCopy.Kind.HISTORY, st.history_key(t.tli), t.history.encode(), t.history_sha256)
                for t in Timeline.objects.exclude(history="") if st.history_key(t.tli) not in keys]

    def backup_file_items(self) -> list[Item]:
        items = []
        for backup in restorable_backups():
            folder = backup_dir(backup)
            if not folder.is_dir():
                continue  # only in storage (or lost): nothing local to copy
            done = set(StorageCopy.verified(self.name).filter(backup=backup).values_list("key", flat=True))
            for path in sorted(p for p in folder.iterdir() if p.is_file()):
                key = st.backup_key(backup.label, path.name)
                if key not in done:
                    items.append(Item(StorageCopy.Kind.BACKUP, key, path, backup_id=backup.pk))
        return items

    def descriptor_items(self) -> list[Item]:
        items = []
        for backup in restorable_backups():
            key = st.descriptor_key(backup.label)
            copies = {c.key: c for c in StorageCopy.verified(self.name).filter(backup=backup)}
            if key in copies:
                continue
            folder = backup_dir(backup)
            files = sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
            file_copies = [copies.get(st.backup_key(backup.label, f)) for f in files]
            if not files or None in file_copies:
                continue  # a file failed or is still missing: no descriptor, so storage never shows a half backup
            held = [c for c in file_copies if c is not None]  # all of them, as checked just above
            listing = [{"name": f, "key": c.key, "size": c.size, "sha256": c.sha256}
                       for f, c in zip(files, held, strict=True)]
            items.append(Item(StorageCopy.Kind.DESCRIPTOR, key, st.descriptor_bytes(backup_dict(backup), listing),
                              backup_id=backup.pk))
        return items

    # --- transfers ------------------------------------------------------------------------------
    def transfer(self, items: list[Item]) -> None:
        attempts = settings.PITR_STORAGE_RETRIES

        def one(item: Item) -> st.Uploaded:  # worker thread: storage I/O only, no database
            return st.with_retries(lambda: st.upload(self.storage, item.key, item.source, item.sha256 or None),
                                   f"upload of {item.key}", attempts=attempts)

        total = self.result.pending
        for item, uploaded, error in st.parallel(items, one, self.workers):
            self.done += 1
            if error is not None:
                message = f"{item.key}: {first_line(error)}"
                self.result.errors.append(message)
                log.warning("upload failed: %s", message)
            else:
                assert uploaded is not None  # no error: the upload returned
                self.record(item, uploaded)
            if self.reporter:
                self.reporter.progress(self.done, total)

    def record(self, item: Item, up: st.Uploaded) -> None:
        now = timezone.now()
        StorageCopy.objects.update_or_create(
            storage=st.identity(self.name), key=item.key,
            defaults=dict(kind=item.kind, segment_id=item.segment_id, backup_id=item.backup_id, size=up.size,
                          sha256=up.sha256, uploaded_at=now - timedelta(seconds=up.verify_seconds),
                          verified_at=now, last_commit_at=item.last_commit_at, last_commit_lsn=item.last_commit_lsn))
        r = self.result
        r.uploaded += 1
        r.bytes += up.size
        r.upload_seconds += up.upload_seconds
        r.verify_seconds += up.verify_seconds
        counters: dict[str, str] = {StorageCopy.Kind.WAL: "wal", StorageCopy.Kind.HISTORY: "history",
                                    StorageCopy.Kind.BACKUP: "backup_files", StorageCopy.Kind.DESCRIPTOR: "descriptors",
                                    StorageCopy.Kind.PARTIAL: "partials"}
        counter = counters[item.kind]
        setattr(r, counter, getattr(r, counter) + 1)


# --- storage check: what is where, and does it hold what the catalog says ------------------------------
@dataclass
class CheckResult(Result):
    storage: str = ""
    local: int = 0  # files that should have a copy (complete indexed WAL, history, verified backups)
    remote: int = 0  # objects under wal/ and backups/
    verified: int = 0  # recorded copies read back with the recorded sha256
    local_only: list[str] = field(default_factory=list)  # no object in storage yet
    remote_only: list[str] = field(default_factory=list)  # in storage, not here (local archive lost, or pruned)
    untracked: list[str] = field(default_factory=list)  # in storage, no copy record (rebuild_catalog adopts them)
    missing: list[str] = field(default_factory=list)  # recorded as copied, gone from storage
    mismatched: list[str] = field(default_factory=list)  # bytes differ from the recorded sha256
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.mismatched)

    def derived(self) -> dict:
        return {"ok": self.ok}

    def __str__(self) -> str:
        return (f"{self.storage}: {self.remote} object(s), {self.verified} verified; "
                f"{len(self.local_only)} local only, "
                f"{len(self.remote_only)} remote only, {len(self.untracked)} untracked, {len(self.missing)} missing, "
                f"{len(self.mismatched)} checksum mismatch(es) in {self.seconds:.2f} s")


def check_storage(storage_name: str = st.STORAGE_NAME, workers: int | None = None) -> CheckResult:
    """Compare the catalog, the local files and the storage; every recorded object is read back and hashed."""
    began = time.monotonic()
    st.probe(storage_name)
    storage = st.get_storage(storage_name)
    result = CheckResult(storage=st.describe(storage_name))
    remote = set(st.list_keys(storage, st.area("wal"))) | set(st.list_keys(storage, st.area("backups")))
    local = _local_keys(storage_name)
    copies = {c.key: c for c in StorageCopy.objects.filter(storage=st.identity(storage_name))}
    result.local, result.remote = len(local), len(remote)
    result.local_only = sorted(local - remote)
    result.remote_only = sorted(remote - local)
    result.untracked = sorted(remote - set(copies))
    result.missing = sorted(set(copies) - remote)
    to_hash = [copies[k] for k in sorted(remote & set(copies))]

    def one(copy: StorageCopy) -> tuple[int, str]:
        return st.with_retries(lambda: st.sha256_object(storage, copy.key), f"reading {copy.key}")

    for copy, got, error in st.parallel(to_hash, one, workers or settings.PITR_DOWNLOAD_PARALLEL):
        if error is not None or got != (copy.size, copy.sha256):
            if error:
                why = first_line(error)
            else:
                assert got is not None  # no error: the read returned
                why = f"sha256 {got[1][:16]}... ({got[0]} bytes)"
            result.mismatched.append(f"{copy.key}: {why}, recorded {copy.sha256[:16]}... ({copy.size} bytes)")
        else:
            result.verified += 1
    result.mismatched.sort()
    result.seconds = round(time.monotonic() - began, 3)
    return result


def _local_keys(storage_name: str) -> set[str]:
    archive = Layout.current().archive
    # A segment copied already is expected under its record's key (an older copy may be in the other form).
    held = dict(StorageCopy.objects.filter(storage=st.identity(storage_name), kind=StorageCopy.Kind.WAL)
                .values_list("segment_id", "key"))
    keys = {held.get(pk) or st.wal_key(name) for pk, name in WalSegment.objects.filter(
        is_partial=False, in_local_archive=True).values_list("pk", "name") if (archive / name).is_file()}
    keys |= {st.history_key(tli) for tli in Timeline.objects.exclude(history="").values_list("tli", flat=True)}
    for backup in restorable_backups():
        folder = backup_dir(backup)
        if folder.is_dir():
            keys |= {st.backup_key(backup.label, p.name) for p in folder.iterdir() if p.is_file()}
            keys.add(st.descriptor_key(backup.label))
    # The snapshot of a .partial still growing here: expected in storage, not "remote only".
    keys |= set(StorageCopy.objects.filter(kind=StorageCopy.Kind.PARTIAL, segment__is_partial=True,
                                           segment__in_local_archive=True).values_list("key", flat=True))
    return keys


__all__ = ["upload_pass", "check_storage", "CheckResult", "UploadResult",
           "wal_to_upload", "storage_recovery_point"]
