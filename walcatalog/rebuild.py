"""Rebuild an empty catalog from what the archive storage holds.

For the day the catalog database is lost but the bucket is not. WAL segments
and ``.history`` files are downloaded into a scratch directory and indexed
there by the ordinary indexer (sha256, commit times, restore points, timeline
rows), so a rebuilt row is the row the indexer would have made. Backups come
from their descriptors; each file a descriptor lists is read back and must
hash to the sha256 it records, or the backup is left out. Every object
adopted gets a verified StorageCopy row.

Rebuilt segment rows say "not in the local archive": the indexer's next pass
finds the local files again, hashes them and marks the identical ones local.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from fleet import servers
from fleet.models import Server, ServerKind
from pitrsite import home, locks
from pitrsite.errors import PitrError, RebuildError, first_line
from pitrsite.jobs import JobState, Reporter
from pitrsite.output import Result
from walcatalog import storage as st
from walcatalog import walnames
from walcatalog.backups import backup_dir
from walcatalog.cluster import header_segment_size
from walcatalog.models import BaseBackup, RestorePoint, StorageCopy, Timeline, WalSegment

log = logging.getLogger(__name__)


@dataclass
class RebuildResult(Result):
    storage: str = ""
    segments: int = 0
    timelines: int = 0
    backups: int = 0
    copies: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # objects not adopted, with why


    def __str__(self) -> str:
        text = (f"rebuilt from {self.storage}: {self.segments} segment(s), {self.timelines} timeline(s), "
                f"{self.backups} backup(s), {self.copies} verified copies ({self.bytes_read:,} bytes read "
                f"in {self.seconds:.2f} s)")
        return text + (f"; {len(self.skipped)} object(s) skipped" if self.skipped else "")


def rebuild_from_storage(reporter: Reporter | None = None, storage_name: str = st.STORAGE_NAME,
                         workers: int | None = None, cluster: str | None = None) -> RebuildResult:
    with locks.all_held(servers.lock(locks.INDEX), servers.lock(locks.UPLOAD)):
        _require_empty()
        st.probe(storage_name)
        _adopt_cluster(st.get_storage(storage_name), cluster)
        return _Rebuild(storage_name, workers or settings.PITR_DOWNLOAD_PARALLEL, reporter).run()


def server_from_storage(name: str, restore_port: int | None = None, storage_prefix: str = "",
                        user: str = "") -> Server:
    """A new home's entry for a server it has never seen, from what storage holds: its name and prefix
    (servers/NAME/ unless given), then its cluster (system identifier, major version) as any rebuild adopts
    it. It is an external server without a connection: pitrsite restores it, and captures nothing of it
    until `server add` on a home that reaches it. `user`: the original's superuser, pitrsite's login to
    the restored copy (through its private socket, no password)."""
    from django.core.exceptions import ValidationError
    from django.core.validators import validate_slug

    try:
        validate_slug(name)
    except ValidationError:
        raise RebuildError(f"server name {name!r} is not a slug: use letters, digits, - and _") from None
    return Server.objects.create(name=name, kind=ServerKind.EXTERNAL, user=user or settings.PITR_PG_SUPERUSER,
                                 storage_prefix=(storage_prefix or f"servers/{name}").strip("/"),
                                 restore_port=restore_port or settings.PITR_RESTORE_PORT)


def _require_empty() -> None:
    counts = {"segments": WalSegment.objects.count(), "backups": BaseBackup.objects.count(),
              "timelines": Timeline.objects.count(), "storage copies": StorageCopy.objects.count()}
    held = [f"{n} {what}" for what, n in counts.items() if n]
    if held:
        raise RebuildError(f"the catalog is not empty ({', '.join(held)}): rebuild_catalog --from-storage only "
                           "fills an empty catalog")


def _adopt_cluster(storage, wanted: str | None) -> None:
    """A server whose cluster is not known yet (a new home) takes the one its prefix in storage holds; with
    several (a re-initialised cluster, a promoted copy) the user names one with --cluster."""
    from walcatalog.cluster import cluster_dir, parse_cluster_dir

    server = servers.current()
    known = cluster_dir(server.pg_major, server.system_identifier) if server.system_identifier else None
    if known and (wanted is None or wanted == known):
        return
    try:
        dirs, files = storage.listdir(st.root().rstrip("/"))
    except FileNotFoundError:
        dirs, files = [], []
    except Exception as exc:
        raise st.as_storage_error(exc) from None
    # Most backends list one level (directories); AzureStorage lists every blob below, by full name.
    location = (getattr(storage, "location", "") or "").strip("/")
    firsts = {d.rstrip("/").rsplit("/", 1)[-1] for d in dirs}
    firsts |= {f.removeprefix(location + "/").removeprefix(st.root()).split("/", 1)[0] for f in files if "/" in f}
    held = sorted(name for name in firsts if parse_cluster_dir(name))
    if known:
        raise RebuildError(f"server {server.name} is cluster {known}; --cluster {wanted} names another")
    if wanted is not None and wanted not in held or wanted is None and len(held) != 1:
        listed = ", ".join(held) or "none"
        raise RebuildError(f"storage {st.identity()} holds cluster(s) {listed} for server {server.name}"
                           + ("" if not held else ": name one with --cluster VERSION-SYSTEMID"))
    parsed = parse_cluster_dir(wanted or held[0])
    assert parsed is not None  # listed because it parses
    server.pg_major, server.system_identifier = parsed
    server.save(update_fields=["pg_major", "system_identifier"])


class _Rebuild:
    def __init__(self, storage_name: str, workers: int, reporter: Reporter | None):
        self.where, self.workers, self.reporter = st.identity(storage_name), workers, reporter
        self.storage = st.get_storage(storage_name)
        self.result = RebuildResult(storage=st.describe(storage_name))
        self.made_backups: list[int] = []

    def step(self, name: str) -> None:
        if self.reporter:
            self.reporter.step(name)

    def run(self) -> RebuildResult:
        began = time.monotonic()
        self.step("listing storage")
        wal_keys = st.list_keys(self.storage, st.area("wal"))
        backup_keys = st.list_keys(self.storage, st.area("backups"))
        scratch = Path(tempfile.mkdtemp(prefix="rebuild-", dir=home.home()))
        # No transaction around the whole rebuild: pg_waldump of every segment and reading every backup back
        # take minutes, and on SQLite one long write transaction makes every other writer fail. Each write is
        # short instead, and a rebuild that fails takes back what it wrote, so the catalog is empty again.
        try:
            fetched = self.fetch_wal(wal_keys, scratch)
            self.step("indexing the downloaded WAL")
            self.index(scratch, fetched)
            self.backups(backup_keys)
        except BaseException:
            self.undo()
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self.step("")
        self.result.seconds = round(time.monotonic() - began, 3)
        return self.result

    # --- WAL ------------------------------------------------------------------------------------
    def fetch_wal(self, keys: list[str], scratch: Path) -> dict[str, tuple[str, int, str, str]]:
        """file name -> (key, size, sha256 as stored, sha256 of the WAL bytes) of every WAL object that looks
        like one, downloaded (and decompressed) into scratch; the rest is skipped."""
        wanted: list[tuple[str, Path]] = []
        taken: dict[str, str] = {}  # file name -> the key adopted for it
        for key in keys:
            name = key.rsplit("/", 1)[1]
            file_name = st.wal_file_name(key)
            # the loosest size: the indexer checks the real one
            if key.startswith(st.area("wal/history/")) and name.endswith(".history") and len(name) == 16:
                wanted.append((key, scratch / name))
            elif file_name is not None and walnames.is_wal_name(file_name[:24], 1 << 20):
                if file_name in taken:  # both forms of one file (the setting changed): the first listed is adopted
                    self.result.skipped.append(f"{key}: {taken[file_name]} holds the same file")
                    continue
                taken[file_name] = key
                wanted.append((key, scratch / file_name))
            else:
                self.result.skipped.append(f"{key}: not a WAL segment or history name")
        self.step("downloading WAL")

        def one(pair: tuple[str, Path]) -> tuple[int, str, str]:
            return st.with_retries(lambda: st.fetch_wal(self.storage, *pair), f"download of {pair[0]}")

        fetched = {}
        for (key, dest), got, error in st.parallel(wanted, one, self.workers):
            if error is not None:
                self.result.skipped.append(f"{key}: {first_line(error)}")
                continue
            assert got is not None  # no error: the download returned
            if dest.name.endswith(".partial"):
                # A snapshot is the valid prefix: padded with zeros to the segment size, as pg_receivewal's own
                # .partial is, the indexer reads it to its last record.
                try:
                    os.truncate(dest, header_segment_size(dest))
                except PitrError as exc:
                    self.result.skipped.append(f"{key}: {exc}")
                    continue
            fetched[dest.name] = (key, *got)
            self.result.bytes_read += got[0]
            if self.reporter:
                self.reporter.progress(len(fetched), len(wanted))
        return fetched

    def index(self, scratch: Path, fetched: dict[str, tuple[str, int, str, str]]) -> None:
        from walcatalog.indexer import index_archive

        outcome = index_archive(scratch)
        self.result.skipped.extend(outcome.errors)
        # What was indexed came from storage, not from the local archive.
        WalSegment.objects.update(in_local_archive=False, mtime_ns=0)
        segments = {s.name: s for s in WalSegment.objects.all()}
        now = timezone.now()
        copies = []
        snapshot_of: dict[int, tuple[datetime | None, int | None]] = {}
        for name, (key, size, sha, content_sha) in fetched.items():
            if name.endswith(".history"):
                kind, segment = StorageCopy.Kind.HISTORY, None
            elif name.endswith(".partial"):
                segment = segments.get(name[:24])
                if segment is None or not segment.is_partial:
                    # Its complete segment is in storage too (a pass stopped before dropping the snapshot).
                    self.result.skipped.append(f"{key}: superseded by the complete segment")
                    continue
                kind = StorageCopy.Kind.PARTIAL
                snapshot_of[segment.pk] = (segment.last_commit_at, segment.last_commit_lsn)
            else:
                segment = segments.get(name)
                if segment is None or segment.sha256 != content_sha:
                    self.result.skipped.append(f"{key}: not indexed")
                    continue
                kind = StorageCopy.Kind.WAL
            commit_at, commit_lsn = snapshot_of.get(segment.pk, (None, None)) if segment else (None, None)
            copies.append(StorageCopy(storage=self.where, key=key, kind=kind, segment=segment, size=size, sha256=sha,
                                      uploaded_at=self.modified(key, now), verified_at=now,
                                      last_commit_at=commit_at, last_commit_lsn=commit_lsn))
        StorageCopy.objects.bulk_create(copies)
        self.result.segments = len(segments)
        self.result.timelines = Timeline.objects.count()
        self.result.copies += len(copies)

    def undo(self) -> None:
        """Delete what this rebuild wrote. It began on an empty catalog and holds the index and upload locks,
        so every segment, timeline, restore point and copy is its own; backups are only the ones it made."""
        with transaction.atomic():
            StorageCopy.objects.all().delete()
            BaseBackup.objects.filter(pk__in=self.made_backups).delete()
            RestorePoint.objects.all().delete()
            WalSegment.objects.all().delete()
            Timeline.objects.all().delete()

    def modified(self, key: str, default: datetime) -> datetime:
        try:
            return self.storage.get_modified_time(key)
        except Exception:  # noqa: BLE001 - not every backend can say; the rebuild time will do
            return default

    # --- backups ------------------------------------------------------------------------------------
    def backups(self, keys: list[str]) -> None:
        root = st.base()
        relative = [k.removeprefix(root) for k in keys]
        labels = sorted({k.split("/")[1] for k in relative if k.count("/") == 2})
        present = set(keys)
        for label in labels:
            key = st.descriptor_key(label)
            if key not in present:
                self.result.skipped.append(f"backups/{label}/: no descriptor (an upload that never finished)")
                continue
            try:
                self.backup(label, key, present)
            except (PitrError, ValueError, KeyError) as exc:
                self.result.skipped.append(f"{key}: {first_line(exc)}")

    def backup(self, label: str, key: str, present: set[str]) -> None:
        self.step(f"checking backup {label}")
        data = st.with_retries(lambda: st.read_bytes(self.storage, key), f"reading {key}")
        doc = st.parse_descriptor(data, key)
        row, files = doc["backup"], doc["files"]
        absent = [f["key"] for f in files if f["key"] not in present]
        if absent:
            raise RebuildError(f"{absent[0]} is listed but not in storage")

        def check(f: dict) -> tuple[int, str]:
            return st.with_retries(lambda: st.sha256_object(self.storage, f["key"]), f"reading {f['key']}")

        for f, got, error in st.parallel(files, check, self.workers):
            if error is not None or got != (f["size"], f["sha256"]):
                raise RebuildError(f"{f['key']} does not match its descriptor "
                                   f"({first_line(error) if error else 'sha256 differs'})")
            self.result.bytes_read += got[0]
        with transaction.atomic():
            self.adopt(label, row, files, key, data)

    def adopt(self, label: str, row: dict, files: list[dict], key: str, data: bytes) -> None:
        backup = BaseBackup.objects.create(
            label=label, compression=row["compression"], state=JobState.DONE, trigger=row.get("trigger") or "rebuild",
            timeline=row["timeline"], start_lsn=_lsn(row["start_lsn"]), stop_lsn=_lsn(row["stop_lsn"]),
            start_time=_time(row["start_time"]), stop_time=_time(row["stop_time"]), size_raw=row["size_raw"],
            size_stored=row["size_stored"], segment_size=row["segment_size"],
            manifest_verified=bool(row["manifest_verified"]),
            created_at=_time(row["created_at"]) or timezone.now(), started_at=_time(row["started_at"]),
            finished_at=_time(row["finished_at"]), steps=row.get("steps") or [],
            path=str(backup_dir_for(label)) if backup_dir_for(label).is_dir() else "")
        self.made_backups.append(backup.pk)
        now = timezone.now()
        StorageCopy.objects.bulk_create(
            [StorageCopy(storage=self.where, key=f["key"], kind=StorageCopy.Kind.BACKUP, backup=backup, size=f["size"],
                         sha256=f["sha256"], uploaded_at=self.modified(f["key"], now), verified_at=now) for f in files]
            + [StorageCopy(storage=self.where, key=key, kind=StorageCopy.Kind.DESCRIPTOR, backup=backup,
                           size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                           uploaded_at=self.modified(key, now), verified_at=now)])
        self.result.backups += 1
        self.result.copies += len(files) + 1


def backup_dir_for(label: str) -> Path:
    return backup_dir(BaseBackup(label=label))


def _lsn(text: str | None) -> int | None:
    return walnames.parse_lsn(text) if text else None


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


__all__ = ["rebuild_from_storage", "RebuildResult", "RebuildError"]
