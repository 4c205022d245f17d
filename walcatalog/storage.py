"""The archive storage: where WAL and backups are copied, through django-storages.

Django's ``STORAGES["archive"]`` is built from the environment by
``pitrsite.config.archive_storage_setting()``: Django's
FileSystemStorage (the default, a directory under PITR_HOME), or
django-storages' S3Storage, AzureStorage or GoogleCloudStorage. Everything
else reaches it through ``django.core.files.storage.storages["archive"]``,
so the backend is only configuration.

Keys are laid out so that a listing by timeline and segment range is one
prefix listing, names sorting in LSN order::

    [<server prefix>/]<version>-<system id>/                        one cluster's files (pgBackRest's
                                                                   archive/<stanza>/<version>-<id>/)
        wal/<timeline, 8 hex>/<segment name>.zst   complete segments, zstd-compressed
        wal/<timeline, 8 hex>/<segment name>.partial   a snapshot of the growing segment: its valid
                                                 prefix, replaced as it grows, dropped once the
                                                 complete segment is uploaded
        wal/history/<timeline>.history
        backups/<label>/<file>                   base.tar.zst, pg_wal.tar.zst, backup_manifest
        backups/<label>/descriptor.json          written last: the backup row + file list with sha256

Two clusters (a server re-initialised, a new primary after disaster recovery) never share a key.

WAL is stored zstd-compressed (PITR_STORAGE_WAL_COMPRESSION=zstd, the default; `none` stores it as it is,
without the suffix): a pgbench segment packs about 15x, which is what a restore from storage downloads and
what the bucket bills. A key's suffix says how its bytes are stored, so both forms are read whatever the
setting. A copy record's size and sha256 are the stored object's (what the storage check reads back); the
bytes a compressed object decompresses to are held to the catalog's sha256 of the segment when it is
restored. A .partial snapshot is stored as it is (its record's size is the valid prefix, which a restore reads
as the snapshot's end), and so are backup files (base.tar.zst is pg_basebackup's own compression).

This module does I/O and hashing only (no models): the uploader, the restore
engine and the rebuild call it from worker threads, and keep every database
write in their own thread.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import posixpath
import re
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, TypeVar

import tenacity
import zstandard
from django.db import connections

from fleet import servers
from pitrsite.config import STORAGE_BACKENDS as BACKENDS
from pitrsite.errors import ChecksumError, LocalChanged, StorageError, VerifyError, first_line

log = logging.getLogger(__name__)

STORAGE_NAME = "archive"
DESCRIPTOR = "descriptor.json"
DESCRIPTOR_FORMAT = 1
CHUNK = 1 << 20

T = TypeVar("T")
R = TypeVar("R")


def get_storage(name: str = STORAGE_NAME):
    from django.core.files.storage import storages

    return storages[name]


def identity(name: str = STORAGE_NAME) -> str:
    """What a storage is, as copy records name it: backend, endpoint or account, bucket/container/directory
    and prefix. Pointing a home at another bucket changes it, so every file uploads again to the new place."""
    from django.conf import settings

    entry = settings.STORAGES.get(name, {})
    options = entry.get("OPTIONS", {})
    backend = next((k for k, v in BACKENDS.items() if v == entry.get("BACKEND")), entry.get("BACKEND", "?"))
    where = options.get("bucket_name") or options.get("azure_container") or options.get("location") or "?"
    endpoint = options.get("endpoint_url") or options.get("account_name") or _blob_endpoint(options) or ""
    prefix = options.get("location", "") if backend != "filesystem" else ""
    text = f"{backend}:{where}" + (f"/{prefix.strip('/')}" if prefix else "")
    return text + (f" at {endpoint}" if endpoint else "")


def _blob_endpoint(options: dict) -> str:
    conn = options.get("connection_string") or ""
    parts = dict(p.split("=", 1) for p in conn.split(";") if "=" in p)
    return parts.get("BlobEndpoint") or parts.get("AccountName", "")


def describe(name: str = STORAGE_NAME) -> str:
    """Where a storage points, for messages (the same text copy records are keyed by)."""
    return identity(name)


# --- keys ---------------------------------------------------------------------------------------------------
def root() -> str:
    """The current server's prefix in storage: two servers' WAL carry the same names. The demo server keeps
    the top level (its copies predate servers)."""
    server = servers.chosen()
    if server is None:
        return ""
    if server.storage_prefix:
        return server.storage_prefix.strip("/") + "/"
    return "" if server.managed else f"servers/{server.name}/"


def base() -> str:
    """The current server's cluster directory: its prefix, then "<version>-<system id>/"."""
    from walcatalog.cluster import cluster_dir

    server = servers.current()
    if not server.system_identifier:
        raise StorageError(f"the cluster of server {server.name} is not known yet (no WAL indexed, nothing "
                           "rebuilt from storage): run index_wal once capture has written WAL")
    return f"{root()}{cluster_dir(server.pg_major, server.system_identifier)}/"


def area(name: str) -> str:
    """"wal" or "backups" under the current server's cluster directory, for listings."""
    return f"{base()}{name}"


ZSTD = ".zst"
# tli/segment, tli/segment.zst (compressed) or tli/segment.partial (a snapshot: stored as it is, since its
# record's size is the valid prefix a restore reads as the snapshot's end)
WAL_OBJECT = re.compile(r"([0-9A-F]{8})/(\1[0-9A-F]{16}(?:\.zst|\.partial)?)")


def wal_suffix() -> str:
    """How new WAL objects are stored: ".zst" (PITR_STORAGE_WAL_COMPRESSION=zstd) or "" (none)."""
    from django.conf import settings

    return ZSTD if settings.PITR_STORAGE_WAL_COMPRESSION == "zstd" else ""


def wal_key(segment_name: str) -> str:
    """Where a complete segment goes now (an older copy may sit under the other form: its record keeps it)."""
    return _segment_path(segment_name) + wal_suffix()


def partial_key(segment_name: str) -> str:
    """A .partial snapshot's own key: beside the complete segment's, never the same."""
    return _segment_path(segment_name) + ".partial"


def _segment_path(segment_name: str) -> str:
    if len(segment_name) != 24:
        raise StorageError(f"{segment_name!r} is not a complete WAL segment name")
    return f"{base()}wal/{segment_name[:8]}/{segment_name}"


def wal_file_name(key: str) -> str | None:
    """The WAL file a key under this cluster's wal/ holds (a segment's name, or its name + ".partial" for a
    snapshot), in either stored form; None for any other key."""
    prefix = f"{base()}wal/"
    found = WAL_OBJECT.fullmatch(key[len(prefix):]) if key.startswith(prefix) else None
    return found.group(2).removesuffix(ZSTD) if found else None


def wal_compressed(key: str) -> bool:
    """Is this a zstd-compressed segment? (A backup's base.tar.zst is not: it is stored as it is.)"""
    return key.endswith(ZSTD) and WAL_OBJECT.fullmatch("/".join(key.rsplit("/", 2)[-2:])) is not None


def history_key(tli: int) -> str:
    return f"{base()}wal/history/{tli:08X}.history"


def backup_key(label: str, file_name: str) -> str:
    return f"{base()}backups/{label}/{file_name}"


def descriptor_key(label: str) -> str:
    return backup_key(label, DESCRIPTOR)


# --- hashing and transfers ----------------------------------------------------------------------------
def sha256_file(path: Path) -> tuple[int, str]:
    with open(path, "rb") as fh:
        return _digest(fh)


def _digest(fh) -> tuple[int, str]:
    """Size and sha256 of a file object's bytes from its start."""
    digest, size = hashlib.sha256(), 0
    fh.seek(0)
    while chunk := fh.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _compress(src, out) -> str:
    """zstd of src's bytes into out (frames carry their content checksum); returns the sha256 of src's bytes."""
    digest = hashlib.sha256()
    with zstandard.ZstdCompressor(write_checksum=True).stream_writer(out, closefd=False) as packer:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            packer.write(chunk)
    return digest.hexdigest()


def decompress(src: Path, dest: Path) -> tuple[int, str]:
    """A compressed WAL object's bytes (src) into dest; returns their size and sha256. A damaged or cut
    stream is a ChecksumError naming the file, and leaves nothing at dest."""
    from walcatalog.verify import INFLATE, Inflating

    try:
        with open(src, "rb") as fh, open(dest, "wb") as out:
            return _copy(Inflating(fh, src.name, INFLATE[ZSTD]), out)
    except VerifyError as exc:
        dest.unlink(missing_ok=True)
        raise ChecksumError(str(exc)) from None


def _copy(src, out) -> tuple[int, str]:
    """src's bytes (read to its end) into out; their size and sha256."""
    digest, size = hashlib.sha256(), 0
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        out.write(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def sha256_object(storage, key: str) -> tuple[int, str]:
    """Read the object back from storage and hash it: the honest check that it holds what we sent."""
    digest, size = hashlib.sha256(), 0
    with storage.open(key, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


@dataclass
class Uploaded:
    key: str
    size: int
    sha256: str
    upload_seconds: float
    verify_seconds: float


def upload(storage, key: str, source: Path | bytes, expect_sha256: str | None = None) -> Uploaded:
    """Write one object (overwriting whatever is under the key) and verify it by reading it back. Under a
    compressed WAL key the source goes up compressed; expect_sha256 is always the source's own (the catalog's)."""
    from django.core.files import File

    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        read: IO[bytes] = stack.enter_context(io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb"))
        body, local = read, None
        if wal_compressed(key):
            body = stack.enter_context(tempfile.TemporaryFile())
            local = _compress(read, body)
        size, sha = _digest(body)
        local = local or sha
        if expect_sha256 and local != expect_sha256:
            raise LocalChanged(f"{source} changed since it was indexed (sha256 {local[:12]}..., "  # type: ignore[str-bytes-safe]
                                f"catalog says {expect_sha256[:12]}...): not uploaded")
        body.seek(0)
        saved = storage.save(key, File(body))
    if saved != key:
        raise StorageError(f"the storage stored {key} as {saved}: it must be configured to overwrite")
    uploaded = time.monotonic()
    got_size, got_sha = sha256_object(storage, key)
    if (got_size, got_sha) != (size, sha):
        raise ChecksumError(f"{key} read back from storage differs from what was sent "
                            f"({got_size} bytes, sha256 {got_sha[:12]}... instead of {size}, {sha[:12]}...)")
    return Uploaded(key, size, sha, uploaded - began, time.monotonic() - uploaded)


def fetch(storage, key: str, dest: Path) -> tuple[int, str]:
    """Copy an object to dest (through dest.download, renamed when complete); returns its size and sha256."""
    tmp = dest.with_name(dest.name + ".download")
    try:
        with storage.open(key, "rb") as src, open(tmp, "wb") as out:
            size, sha = _copy(src, out)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        if is_not_found(exc):
            raise StorageError(f"{key} is missing from storage {describe()}") from None
        raise
    os.replace(tmp, dest)
    return size, sha


def fetch_wal(storage, key: str, dest: Path) -> tuple[int, str, str]:
    """A WAL object into dest as WAL (decompressed when it is stored compressed): its stored size and sha256,
    and the sha256 of the WAL bytes."""
    if not wal_compressed(key):
        size, sha = fetch(storage, key, dest)
        return size, sha, sha
    packed = dest.with_name(dest.name + ZSTD)
    size, sha = fetch(storage, key, packed)
    try:
        return size, sha, decompress(packed, dest)[1]
    finally:
        packed.unlink(missing_ok=True)


RANGE = 8 << 20  # bytes per ranged GET of a streamed S3 object
RANGES_AHEAD = 4  # ranged GETs in flight at once
RANGE_CHUNK = 256 << 10  # bytes handed on as they arrive: the reader starts on the first ones, not a whole range


class _Range:
    """One ranged GET's bytes, queued as they arrive (by a pool thread) for the reader to take in order."""

    def __init__(self, start: int, end: int):
        self.start, self.end = start, end
        self.chunks: deque[bytes] = deque()
        self.done = False
        self.error: BaseException | None = None
        self.arrived = threading.Condition()

    def take(self) -> bytes | None:
        """The next bytes, waiting for them; None once the range is all taken."""
        with self.arrived:
            self.arrived.wait_for(lambda: self.chunks or self.done)
            return self.chunks.popleft() if self.chunks else None


class RangeReader:
    """An S3 object read front to back through ranged GETs, RANGES_AHEAD of them in flight: one GET is bound
    by one connection's throughput (boto3's own transfers split a download the same way, but only into a
    seekable file). read() returns the next bytes as soon as they arrive, b"" at the end; boto3 clients are
    thread-safe."""

    def __init__(self, client, bucket: str, key: str, size: int):
        self.client, self.bucket, self.key, self.size = client, bucket, key, size
        self.pool = ThreadPoolExecutor(RANGES_AHEAD, thread_name_prefix="range")
        self.pending: deque[_Range] = deque()
        self.offset = 0
        while len(self.pending) < RANGES_AHEAD and self._ask():
            pass

    def _ask(self) -> bool:
        if self.offset >= self.size:
            return False
        part = _Range(self.offset, min(self.offset + RANGE, self.size) - 1)
        self.pending.append(part)
        self.pool.submit(self._get, part)
        self.offset = part.end + 1
        return True

    def _get(self, part: _Range) -> None:
        received = 0
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key,
                                          Range=f"bytes={part.start}-{part.end}")["Body"]
            while chunk := body.read(RANGE_CHUNK):
                received += len(chunk)
                with part.arrived:
                    part.chunks.append(chunk)
                    part.arrived.notify()
            if received != part.end - part.start + 1:
                raise StorageError(f"{self.key}: bytes {part.start}-{part.end} came back {received} bytes long")
        except BaseException as exc:  # noqa: BLE001 - raised by read(), in the reader's thread
            part.error = exc
        finally:
            with part.arrived:
                part.done = True
                part.arrived.notify()

    def read(self, _size: int = -1) -> bytes:
        while self.pending:
            head = self.pending[0]
            chunk = head.take()
            if chunk is not None:
                return chunk
            if head.error is not None:
                raise head.error
            self.pending.popleft()
            self._ask()
        return b""

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def stream(storage, key: str):
    """A reader of the object as it arrives. django-storages' files download the whole object to a temporary
    file on their first read; an S3 object is read by ranges instead (RangeReader). Elsewhere (a filesystem,
    Azure, GCS) the file."""
    try:
        fh = storage.open(key, "rb")
        obj = getattr(fh, "obj", None)  # storages.backends.s3.S3File: its HEAD is done
        if obj is None:
            return fh
        fh.close()
        return RangeReader(obj.meta.client, obj.bucket_name, obj.key, obj.content_length)
    except Exception as exc:
        if is_not_found(exc):
            raise StorageError(f"{key} is missing from storage {describe()}") from None
        raise


def download(storage, key: str, dest: Path, expect_sha256: str, expect_size: int | None = None,
             content_sha256: str | None = None) -> int:
    """Copy an object to dest, hashing on the way; a mismatch leaves nothing at dest and names the object.
    A compressed WAL object is checked as stored, then decompressed into dest and held to content_sha256
    (the catalog's sha256 of the segment) when given. Returns the stored size."""
    tmp = dest.with_name(dest.name + ".download")
    size, got = fetch(storage, key, tmp)
    if got != expect_sha256 or (expect_size is not None and size != expect_size):
        tmp.unlink(missing_ok=True)
        raise ChecksumError(f"{key} in storage {describe()} is corrupted: sha256 {got[:16]}... ({size} bytes), "
                            f"expected {expect_sha256[:16]}...")
    if wal_compressed(key):
        plain = dest.with_name(dest.name + ".plain")
        try:
            _, sha = decompress(tmp, plain)
        finally:
            tmp.unlink(missing_ok=True)
        if content_sha256 and sha != content_sha256:
            plain.unlink(missing_ok=True)
            raise ChecksumError(f"{key} in storage {describe()} decompresses to bytes that are not the cataloged "
                                f"segment: sha256 {sha[:16]}..., expected {content_sha256[:16]}...")
        tmp = plain
    os.replace(tmp, dest)
    return size


def is_not_found(exc: BaseException) -> bool:
    """Each backend says "no such object" its own way (FileNotFoundError, Azure's ResourceNotFoundError...)."""
    return isinstance(exc, FileNotFoundError) or type(exc).__name__ in ("ResourceNotFoundError", "NotFound")


def read_bytes(storage, key: str) -> bytes:
    with storage.open(key, "rb") as fh:
        return fh.read()


def list_keys(storage, prefix: str) -> list[str]:
    """Every key under a prefix (one level of "directories" deep per listdir call), sorted."""
    try:
        dirs, files = storage.listdir(prefix)
    except FileNotFoundError:  # FileSystemStorage: the directory does not exist yet
        return []
    except Exception as exc:
        raise as_storage_error(exc) from None
    # Backends differ: most list one level relative to the prefix; AzureStorage lists every blob below
    # it, by full name (its location prefix included).
    location = (getattr(storage, "location", "") or "").strip("/") if "/" in "".join(files) else ""
    keys = [(f.removeprefix(location + "/") if location else f) if "/" in f else f"{prefix}/{f}" for f in files]
    for d in dirs:
        keys.extend(list_keys(storage, f"{prefix}/{posixpath.basename(d.rstrip('/'))}"))
    return sorted(keys)


# --- one-line storage errors ------------------------------------------------------------------------
def error_code(exc: BaseException) -> str:
    """The service's own error code: botocore's ClientError carries it in .response, Azure's in .error_code."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    code = getattr(exc, "error_code", None) or ""
    return str(getattr(code, "value", code))  # azure-storage-blob's StorageErrorCode is an enum


def as_storage_error(exc: BaseException, name: str = STORAGE_NAME) -> StorageError:
    """A backend's exception as one line that says which storage and what to change (never a traceback)."""
    if isinstance(exc, StorageError):
        return exc
    where, code, kind = identity(name), error_code(exc), type(exc).__name__
    if code in ("NoSuchBucket", "ContainerNotFound"):
        what = "bucket" if code == "NoSuchBucket" else "container"
        return StorageError(f"storage {where}: the {what} does not exist; create it first (pitrsite never "
                            "creates buckets or containers)")
    if _credentials_refused(exc):
        return StorageError(f"storage {where}: credentials refused ({code or kind}); check the PITR_STORAGE_* keys")
    if kind in ("EndpointConnectionError", "ConnectTimeoutError", "ServiceRequestError", "ConnectionError",
                "ServiceRequestTimeoutError", "ReadTimeoutError"):
        return StorageError(f"storage {where}: cannot reach the endpoint ({first_line(exc)})")
    return StorageError(f"storage {where}: {code or kind}: {first_line(exc)}")


def probe(name: str = STORAGE_NAME) -> None:
    """List this server's area once, so a wrong endpoint, a missing bucket or refused credentials stop a
    pass at the start with one line (a HEAD of a missing key reads "absent", a listing does not)."""
    storage = get_storage(name)
    try:
        # The server's prefix (its cluster may not be known yet), once: passes retry each transfer, a probe
        # only asks "reachable?".
        storage.listdir(root().rstrip("/"))
    except FileNotFoundError:
        pass  # FileSystemStorage: the directory appears with the first upload
    except Exception as exc:
        raise as_storage_error(exc, name) from None


# --- retries and bounded parallelism ---------------------------------------------------------------
# Errors that another attempt cannot mend: a changed local file, a missing or unreadable one, refused
# credentials. Everything else (timeouts, resets, 5xx) is retried.
NOT_RETRIED: tuple[type[BaseException], ...] = (LocalChanged, FileNotFoundError, PermissionError, IsADirectoryError)


def _credentials_refused(exc: BaseException) -> bool:
    return type(exc).__name__ in ("NoCredentialsError", "ClientAuthenticationError", "RefreshError",
                                  "DefaultCredentialsError") \
        or error_code(exc) in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AuthorizationFailure",
                               "AuthenticationFailed")


def with_retries(fn: Callable[[], R], what: str, attempts: int = 4, backoff: float = 0.5,
                 final: tuple[type[BaseException], ...] = ()) -> R:
    """Call fn, retrying failures with exponential backoff (tenacity); NOT_RETRIED, refused credentials and
    errors of the `final` types are raised at once. The S3 and Azure clients are built without retries of
    their own (archive_storage_setting), so this is the one place that decides how often to try."""
    def retryable(exc: BaseException) -> bool:
        return not isinstance(exc, NOT_RETRIED + final) and not _credentials_refused(exc)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None  # set before tenacity sleeps
        exc = state.outcome.exception()
        assert exc is not None  # only exceptions are retried
        log.warning("%s failed (%s): retry %d/%d in %.1f s", what, first_line(exc),
                    state.attempt_number, attempts - 1, state.next_action.sleep)

    retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(attempts), reraise=True,
                                 wait=tenacity.wait_exponential(multiplier=backoff, exp_base=2, min=backoff),
                                 retry=tenacity.retry_if_exception(retryable), before_sleep=before_sleep)
    return retrying(fn)


def parallel(items: Iterable[T], fn: Callable[[T], R],
             workers: int) -> Iterator[tuple[T, R | None, BaseException | None]]:
    """Run fn over items in a bounded thread pool; yield (item, result, error) as each finishes."""
    items = list(items)
    if not items:
        return
    def run(item: T) -> R:
        try:
            return fn(item)
        finally:
            # Django opens a connection per thread on first use (a foreign key read is enough) and
            # never closes it: a pool thread must not keep one open after its task.
            connections.close_all()

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items))), thread_name_prefix="storage") as pool:
        futures = {pool.submit(run, item): item for item in items}
        try:
            for future in as_completed(futures):
                error = future.exception()
                yield futures[future], (None if error else future.result()), error
        finally:
            for future in futures:
                future.cancel()


# --- descriptors --------------------------------------------------------------------------------------
def descriptor_bytes(backup_row: dict, files: list[dict]) -> bytes:
    """The backup row (walcatalog.serializers.backup_dict) plus its files: enough to rebuild the catalog."""
    return json.dumps({"format": DESCRIPTOR_FORMAT, "backup": backup_row, "files": files},
                      indent=2, sort_keys=True).encode()


def parse_descriptor(data: bytes, key: str) -> dict:
    try:
        doc = json.loads(data)
        if doc.get("format") != DESCRIPTOR_FORMAT or not doc["backup"]["label"] or not isinstance(doc["files"], list):
            raise ValueError("unknown format")
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{key} is not a pitrsite backup descriptor ({exc})") from None
    return doc
