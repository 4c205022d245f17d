"""Verifying a base backup in the pass that writes it, as pg_verifybackup would verify a plain one.

PostgreSQL 15's pg_verifybackup reads plain backups only; unpacking the tar files into scratch to run it
cost as much as the backup. Instead, while pg_basebackup writes base.tar, a thread follows the file as it
grows, decompresses it and computes each member's CRC32C and size. zstd and gzip are decompressed in
this process (zstandard, zlib), lz4 by an `lz4 -dc` process: a `zstd -dc` process and the pipes to and
from it took 2.4 times the CPU of the same check in process. When pg_basebackup is done, the members
are held against backup_manifest (whose own SHA-256 is checked first): every listed file present with
its size and checksum, nothing unlisted but what pg_verifybackup ignores too. The WAL range the manifest
names is parsed with pg_waldump, as pg_verifybackup does, from pg_wal.tar unpacked into scratch (the WAL
only: a few segments).
A mismatch raises BackupError naming the file; the backup is then never offered for restore.

While pg_basebackup runs, the verifier's threads and its decompressor run at the lowest CPU priority:
on a busy machine they take only what pg_basebackup (and the walsender) leave, so the copy is not slowed
by its own check. Once pg_basebackup says its archives are written they get their priority back and
finish what is left, mostly from the page cache, while pg_basebackup fsyncs (walcatalog/backups.py).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import threading
import zlib
from pathlib import Path
from typing import BinaryIO, Callable

import google_crc32c
import zstandard

from pitrsite import runner
from pitrsite.errors import VerifyError
from walcatalog import walnames

CHUNK = 1 << 20
IDLE_NICE = 19
# Files pg_verifybackup does not hold against the manifest (verify_backup_directory's ignore list).
IGNORED = {"backup_manifest", "postgresql.auto.conf", "recovery.signal", "standby.signal"}
INFLATE = {".zst": lambda: zstandard.ZstdDecompressor().decompressobj(), ".gz": lambda: zlib.decompressobj(wbits=31)}
DECOMPRESS = {".lz4": ["lz4", "-dc"]}  # no lz4 module here: its own process
# s between two looks at a file the writer is still growing. What it writes meanwhile is what the check has
# left to read when the writer is done: at 0.05 s that was up to 2 MiB of zstd (0.03-0.05 s of work after
# pg_basebackup); an empty read costs microseconds.
FOLLOW_POLL = 0.005
WAL_PAGE = 1 << 16  # past a range's end: more than any XLOG_BLCKSZ (at most 64 kB)
INFLATE_CHUNK = 1 << 15  # compressed bytes a step: measured fastest (outputs of ~1 MiB; larger ones cost copies)


class Follower:
    """Reads a file that another process may still be writing, until that process is done and EOF is met.

    It also computes the SHA-256 of every byte it read: the checksum the scrub holds the file to later.
    """

    def __init__(self, path: Path, writer_done: Callable[[], bool], stop: threading.Event,
                 wake: threading.Event | None = None):
        self.path, self.writer_done, self.stop = path, writer_done, stop
        self.wake = wake or threading.Event()  # set when the writer is done: no need to sleep out the poll
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.fh: BinaryIO | None = None

    def read(self, size: int = CHUNK) -> bytes:
        while True:
            if self.stop.is_set():
                raise VerifyError("verification stopped")
            if self.fh is None:
                if self.path.exists():
                    self.fh = open(self.path, "rb")
                elif self.writer_done():
                    raise VerifyError(f"{self.path.name} was not written")
                else:
                    self.wake.wait(FOLLOW_POLL)
                    continue
            done = self.writer_done()  # read before the data: what was written before it counts
            data = self.fh.read(size)
            if data or done:
                self.sha256.update(data)
                self.size += len(data)
                return data
            self.wake.wait(FOLLOW_POLL)  # caught up with the writer

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


class Inflating:
    """A compressed stream read as the bytes it holds: whole frames (gzip members, zstd frames) one after
    another, as `gzip -dc` and `zstd -dc` read them (pg_basebackup writes pg_wal.tar.gz as a member per
    file), the last one complete and followed by nothing."""

    def __init__(self, source, name: str, new_decompressor: Callable):
        self.source, self.name, self.new = source, name, new_decompressor
        self.decompressor = new_decompressor()

    def read(self, size: int = CHUNK) -> bytes:
        while True:
            if self.decompressor.eof:  # a frame ended: the stream ends here, or the next frame begins
                data = self.decompressor.unused_data or self.source.read(INFLATE_CHUNK)
                if not data:
                    return b""
                self.decompressor = self.new()
            else:
                data = self.source.read(INFLATE_CHUNK)
                if not data:
                    raise VerifyError(f"{self.name} ends before its compressed stream does")
            try:
                out = self.decompressor.decompress(data)
            except (zlib.error, zstandard.ZstdError) as exc:
                # Bytes after the last frame that do not begin another one land here too.
                raise VerifyError(f"{self.name} holds corrupt compressed data ({exc})") from None
            if out:
                return out


BLOCK = 512
REGULAR = (b"0", b"\0", b"7")  # ustar's regular file type flags
DATALESS = (b"1", b"2", b"5")  # hard link, symbolic link, directory


class TarReader:
    """The members of a tar stream read front to back, without Python's tarfile (which copied every byte
    through its stream layer: 2 s per 350 MB, five times zstd's decompression of the same archive).

    Only what a verifier needs: ustar headers (checksum checked), GNU long names and pax paths, the data in
    pieces of large reads. Anything it cannot read is a VerifyError, never a member passed over.
    """

    def __init__(self, stream):
        self.stream, self.buf, self.pos = stream, b"", 0

    def _fill(self) -> None:
        data = self.stream.read(CHUNK)
        if not data:
            raise VerifyError("the tar stream ends in the middle of a member")
        self.buf, self.pos = (self.buf[self.pos:] + data if self.pos < len(self.buf) else data), 0

    def take(self, size: int) -> bytes:
        while len(self.buf) - self.pos < size:
            self._fill()
        data = self.buf[self.pos:self.pos + size]
        self.pos += size
        return data

    def chunks(self, size: int):
        """The next `size` bytes in pieces of the read buffer, then the padding to a block skipped."""
        left = size
        while left:
            if self.pos >= len(self.buf):
                self._fill()
            piece = min(left, len(self.buf) - self.pos)
            yield self.buf[self.pos:self.pos + piece]  # a copy, cheap next to decompression (the C CRC takes bytes)
            self.pos += piece
            left -= piece
        self.take(-size % BLOCK)

    def data(self, size: int) -> bytes:
        return b"".join(self.chunks(size))

    def headers(self):
        """(name, type flag, size) of each member; the caller reads or skips its data before the next."""
        long_name: str | None = None
        while True:
            header = self.take(BLOCK)
            if header == bytes(BLOCK):
                return  # the end-of-archive marker
            stated = _number(header[148:156])
            if stated != sum(header[:148]) + 8 * 32 + sum(header[156:]):
                raise VerifyError(f"a tar header at byte {self.pos - BLOCK} has a bad checksum")
            kind, size = header[156:157], _number(header[124:136])
            if kind == b"L":  # GNU: the next member's name, too long for its header
                long_name = self.data(size).rstrip(b"\0").decode()
                continue
            if kind in (b"x", b"g"):  # pax: key=value records; only a path matters here
                records = _pax(self.data(size))
                if kind == b"x" and "path" in records:
                    long_name = records["path"]
                continue
            name = header[:100].split(b"\0", 1)[0].decode()
            if header[257:262] == b"ustar" and header[345]:
                name = header[345:500].split(b"\0", 1)[0].decode() + "/" + name
            yield (long_name or name), kind, size
            long_name = None


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # base-256, for sizes past 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise VerifyError(f"a tar header holds {text!r} where a number belongs") from None


def _pax(data: bytes) -> dict[str, str]:
    records, pos = {}, 0
    while pos < len(data):
        length = int(data[pos:data.index(b" ", pos)])
        key, _, value = data[data.index(b" ", pos) + 1:pos + length - 1].partition(b"=")
        records[key.decode()] = value.decode()
        pos += length
    return records


def members(stream, prefix: str = "") -> dict[str, tuple[int, str]]:
    """{path: (size, crc32c hex)} of the regular files in a tar stream read front to back."""
    found: dict[str, tuple[int, str]] = {}
    reader = TarReader(stream)
    for name, kind, size in reader.headers():
        crc = 0
        # Links and directories carry no data, whatever their size field says (as tarfile reads them).
        for chunk in reader.chunks(0 if kind in DATALESS else size):
            crc = google_crc32c.extend(crc, chunk)
        if kind in REGULAR:
            # The manifest prints the CRC's bytes as they lie in memory (little-endian), not the number.
            found[prefix + name.removeprefix("./")] = (size, crc.to_bytes(4, "little").hex())
    return found


class ArchiveCheck:
    """Follows one tar archive (compressed or not) in a thread and collects its members' checksums.

    While the archive is still being written (writer_done() false at the start), the check runs at the
    lowest priority until writer_finished() is called.
    """

    def __init__(self, path: Path, writer_done: Callable[[], bool], owner: str, prefix: str = ""):
        self.path, self.prefix, self.owner = path, prefix, owner
        self.stop = threading.Event()
        self.finished = threading.Event()
        self.follower = Follower(path, writer_done, self.stop, self.finished)
        self.found: dict[str, tuple[int, str]] = {}
        self.error: BaseException | None = None
        self.lowered: list[int] = []  # thread and process ids given IDLE_NICE, to give their priority back
        self.priority = os.getpriority(os.PRIO_PROCESS, 0)
        self.lock = threading.Lock()
        if writer_done():
            self.finished.set()
        self.thread = threading.Thread(target=self._run, name=f"verify-{path.name}", daemon=True)
        self.thread.start()

    def _yield_cpu(self, pid: int) -> None:
        """Lowest priority for a thread or process while the writer runs (a decompressor started by a
        lowered thread inherits it); none once it is done."""
        with self.lock:
            if not self.finished.is_set() and _set_priority(pid, IDLE_NICE):
                self.lowered.append(pid)

    def writer_finished(self) -> None:
        """The writer is done: the check stops yielding the CPU and stops waiting out its poll."""
        with self.lock:
            self.finished.set()
            for pid in self.lowered:
                _set_priority(pid, self.priority)  # not allowed without CAP_SYS_NICE: it finishes niced
            self.lowered.clear()

    def _run(self) -> None:
        self._yield_cpu(threading.get_native_id())
        try:
            command = DECOMPRESS.get(self.path.suffix)
            if command is None:
                inflate = INFLATE.get(self.path.suffix)
                stream = Inflating(self.follower, self.path.name, inflate) if inflate else self.follower
                self.found = members(stream, self.prefix)
                while stream.read(CHUNK):
                    pass  # what follows the tar's end counts in the file's SHA-256 too
                return
            proc = runner.popen(command, owner=self.owner, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=False)
            assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None  # all PIPE
            with self.lock:
                if self.finished.is_set():  # it inherited this thread's priority
                    _set_priority(proc.pid, self.priority)
                else:
                    self.lowered.append(proc.pid)
            for pipe in (proc.stdin, proc.stdout):  # 1 MiB pipes: fewer round trips with the decompressor
                try:
                    fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, CHUNK)
                except OSError:
                    pass  # above the system's pipe-max-size: the default works, slower
            pump = threading.Thread(target=self._pump, args=(proc,), daemon=True)
            pump.start()
            try:
                self.found = members(proc.stdout, self.prefix)
                proc.stdout.read()  # a decompressor must see its whole input: drain what follows the tar's end
            finally:
                pump.join()
                errors = proc.stderr.read().decode(errors="replace").strip()
                if proc.wait() != 0 and self.error is None:
                    self.error = VerifyError(f"{self.path.name}: {command[0]} failed ({errors or 'no output'})")
        except BaseException as exc:  # noqa: BLE001 - handed to the job's thread by result()
            self.error = self.error or exc
        finally:
            self.follower.close()

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stdin is not None  # PIPE
        self._yield_cpu(threading.get_native_id())
        try:
            while data := self.follower.read(CHUNK):
                proc.stdin.write(data)
        except BrokenPipeError:
            pass  # the decompressor failed: its own error is reported
        except BaseException as exc:  # noqa: BLE001 - handed to the job's thread by result()
            self.error = exc
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass

    def result(self) -> dict[str, tuple[int, str]]:
        self.thread.join()
        if self.error is not None:
            if isinstance(self.error, VerifyError):
                raise VerifyError(f"{self.path.name} is not a readable tar archive: {self.error}")
            raise self.error
        return self.found

    def cancel(self) -> None:
        self.stop.set()
        self.thread.join()


def _set_priority(pid: int, nice: int) -> bool:
    """setpriority on one thread (Linux: a thread id) or process; False if not allowed or already gone."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, nice)
    except OSError:
        return False
    return True


def read_manifest(path: Path, data: bytes | None = None) -> dict:
    """backup_manifest (or its bytes, read already), its own SHA-256 checked as pg_verifybackup checks it
    (all but the last line)."""
    data = path.read_bytes() if data is None else data
    cut = data.rstrip(b"\n").rfind(b"\n")
    try:
        manifest = json.loads(data)
        stated = manifest["Manifest-Checksum"]
    except (ValueError, KeyError):
        raise VerifyError(f"{path} is not a backup manifest") from None
    if hashlib.sha256(data[:cut + 1]).hexdigest() != stated:
        raise VerifyError(f"{path}: the manifest's checksum does not match its contents")
    return manifest


def compare(manifest: dict, found: dict[str, tuple[int, str]]) -> None:
    """Every file the manifest lists, with its size and CRC32C; no file it does not list."""
    listed = {}
    for entry in manifest["Files"]:
        if entry.get("Checksum-Algorithm") != "CRC32C":
            raise VerifyError(f"{entry['Path']}: checksum algorithm {entry.get('Checksum-Algorithm')!r}, "
                              "expected CRC32C (pg_basebackup --manifest-checksums=CRC32C)")
        listed[entry["Path"]] = entry
    for path, entry in listed.items():
        if path not in found:
            raise VerifyError(f"{path} is listed in backup_manifest but missing from the backup")
        size, crc = found[path]
        if size != entry["Size"]:
            raise VerifyError(f"{path} has size {size} in the backup, {entry['Size']} in backup_manifest")
        if crc != entry["Checksum"]:
            raise VerifyError(f"{path}: checksum mismatch (CRC32C {crc}, backup_manifest says {entry['Checksum']})")
    extra = sorted(p for p in found if p not in listed and p not in IGNORED and not p.startswith("pg_wal/"))
    if extra:
        raise VerifyError(f"{extra[0]} is in the backup but not in backup_manifest"
                          + (f" ({len(extra) - 1} more)" if len(extra) > 1 else ""))


def unpack_wal(archive: Path, into: Path, ends: dict[int, int] | None = None) -> bool:
    """pg_wal.tar's WAL files written into `into` (flat, as pg_waldump --path reads them), in this process:
    a tar process as the server account took 0.02-0.035 s of a 0.5 s backup. False for lz4 (no module here:
    the caller runs tar). Member names are taken only when they are plain file names.

    `ends` (timeline -> the end LSN of the manifest's WAL range on it): a segment's bytes past that end are
    read (the stream must be whole) but not written, and the file keeps its size as a hole. pg_waldump
    --end never reads past the end; writing the zeros that follow a short range took 0.03-0.05 s of a
    0.7 s backup, during pg_basebackup's fsync of the backup.
    """
    if archive.suffix not in INFLATE and archive.suffix != ".tar":
        return False
    with open(archive, "rb") as fh:
        inflate = INFLATE.get(archive.suffix)
        stream = Inflating(fh, archive.name, inflate) if inflate else fh
        reader = TarReader(stream)
        for name, kind, size in reader.headers():
            data = reader.chunks(0 if kind in DATALESS else size)
            base = name.removeprefix("./")
            if kind in REGULAR and "/" not in base and base not in ("", ".", ".."):
                keep = _needed(base, size, ends)
                with open(into / base, "xb") as out:
                    for chunk in data:
                        if keep > 0:
                            out.write(chunk[:keep])
                        keep -= len(chunk)
                    out.truncate(size)
            else:
                for _ in data:
                    pass  # archive_status/ and the like: pg_waldump reads segments only
        while stream.read(CHUNK):
            pass  # to the end of the compressed stream, which must be whole (a restore's tar reads it all)
    return True


def _needed(name: str, size: int, ends: dict[int, int] | None) -> int:
    """How many of a segment file's bytes pg_waldump may read: up to its timeline's end (a page more, to be
    safe), all of them for a name that is not a segment's or a timeline with no range."""
    try:
        wal = walnames.parse_wal_name(name, walnames.validate_segment_size(size))
    except walnames.WalNameError:
        return size
    if not ends or wal.kind != "segment" or wal.timeline not in ends:
        return size
    return max(0, min(size, ends[wal.timeline] - wal.start_lsn(size) + WAL_PAGE))


def wal_check(pg_waldump: str, manifest: dict, wal_dir: Path, run: Callable[[list[str]], object]) -> None:
    """Every WAL-Range of the manifest parses from its start to its end (pg_verifybackup's own check)."""
    for wal_range in manifest["WAL-Ranges"]:
        run([pg_waldump, "--quiet", f"--path={wal_dir}", f"--timeline={wal_range['Timeline']}",
             f"--start={wal_range['Start-LSN']}", f"--end={wal_range['End-LSN']}"])


def clear(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
