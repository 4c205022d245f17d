"""A base backup is verified in the pass that writes it (walcatalog/verify.py), and one that fails is never offered.

Real pg_basebackup output throughout; the damage is done to real bytes: a flipped byte inside a tar member,
a manifest entry that disagrees, a file the manifest does not list, a torn WAL segment.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from fleet.layout import Layout
from pitrsite.errors import StepFailed
from pitrsite.jobs import JobReporter, JobState
from walcatalog import backups, verify, walnames
from walcatalog import storage as st
from walcatalog.backups import backup_dir, queue_backup, restorable_backups, run_backup

pytestmark = [pytest.mark.fleet, pytest.mark.django_db]


@pytest.fixture(scope="module")
def plain_backup(fleet, django_db_setup, django_db_blocker, tmp_path_factory):
    """One uncompressed verified backup, copied aside (the tests damage copies, never the original)."""
    with django_db_blocker.unblock():
        backup = queue_backup("none")
        run_backup(backup, JobReporter(backup))
        backup.refresh_from_db()
        assert backup.state == JobState.DONE and backup.manifest_verified, backup.error
        copy = tmp_path_factory.mktemp("backup") / "copy"
        shutil.copytree(backup_dir(backup), copy)
        yield backup, copy
        # Committed outside the tests' transactions: later modules expect no backup rows.
        shutil.rmtree(backup_dir(backup), ignore_errors=True)
        backup.delete()


def found_in(path: Path, prefix: str = "") -> dict:
    return verify.ArchiveCheck(path, lambda: True, "test-verify", prefix).result()


def rewritten(data: bytes, change) -> bytes:
    """A manifest edited and given a correct checksum again, as a buggy or hostile writer would."""
    manifest = json.loads(data)
    change(manifest)
    manifest.pop("Manifest-Checksum")
    body = json.dumps(manifest, indent=0)[:-1].rstrip() + ",\n"
    return (body + f'"Manifest-Checksum": "{hashlib.sha256(body.encode()).hexdigest()}"}}\n').encode()


def rewrite_manifest(path: Path, change) -> None:
    path.write_bytes(rewritten(path.read_bytes(), change))


def flip_crc(manifest: dict) -> None:
    manifest["Files"][7].update(Checksum=f"{int(manifest['Files'][7]['Checksum'], 16) ^ 1:08x}")


def test_backup_is_verified_and_hashed_in_one_pass(plain_backup):
    backup, copy = plain_backup
    assert [s["name"] for s in backup.steps][-2:] == ["copying files (pg_basebackup)",
                                                      "verifying (manifest checksums, pg_waldump)"]
    manifest = verify.read_manifest(copy / "backup_manifest")
    found = found_in(copy / "base.tar")
    verify.compare(manifest, found)  # the members we read are the manifest's files, sizes and CRC32C
    assert len(found) >= len(manifest["Files"]) > 500
    for name in ("base.tar", "pg_wal.tar", "backup_manifest"):  # the scrub's reference: the bytes on disk
        assert backup.file_hashes[name]["sha256"] == st.sha256_file(copy / name)[1]


def test_a_flipped_byte_in_a_member_is_refused_naming_the_file(plain_backup, tmp_path):
    _, copy = plain_backup
    damaged = tmp_path / "base.tar"
    shutil.copyfile(copy / "base.tar", damaged)
    with tarfile.open(damaged) as tar:
        member = next(m for m in tar if m.isreg() and m.name.startswith("base/") and m.size >= 8192)
    with open(damaged, "r+b") as fh:
        fh.seek(member.offset_data + 4000)
        byte = fh.read(1)
        fh.seek(member.offset_data + 4000)
        fh.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(verify.VerifyError, match=f"{member.name}: checksum mismatch"):
        verify.compare(verify.read_manifest(copy / "backup_manifest"), found_in(damaged))


COMPRESSORS = {".zst": ["zstd", "-q", "-c"], ".gz": ["gzip", "-c"], ".lz4": ["lz4", "-q", "-c"]}


@pytest.mark.parametrize("suffix", list(COMPRESSORS))
def test_a_truncated_or_extended_archive_is_refused(plain_backup, tmp_path, suffix):
    """Cut in the middle, cut by its last byte only (every member whole, the compressed stream not), or
    followed by bytes after its end: each is refused, though the tar inside may read to its end marker."""
    import subprocess

    _, copy = plain_backup
    data = subprocess.run(COMPRESSORS[suffix], input=(copy / "base.tar").read_bytes(), capture_output=True,
                          check=True).stdout
    manifest = verify.read_manifest(copy / "backup_manifest")
    damaged = tmp_path / f"base.tar{suffix}"
    damaged.write_bytes(data)
    verify.compare(manifest, found_in(damaged))  # whole: it passes
    if suffix != ".lz4":  # in frames (members) one after another, as pg_basebackup writes pg_wal.tar.gz
        plain = (copy / "base.tar").read_bytes()
        halves = [subprocess.run(COMPRESSORS[suffix], input=part, capture_output=True, check=True).stdout
                  for part in (plain[:len(plain) // 3], plain[len(plain) // 3:])]
        damaged.write_bytes(b"".join(halves))
        verify.compare(manifest, found_in(damaged))
    for bad in (data[: len(data) // 2], data[:-1], data + b"trailing bytes"):
        damaged.write_bytes(bad)
        with pytest.raises(verify.VerifyError):
            verify.compare(manifest, found_in(damaged))


def test_manifest_disagreeing_or_tampered_is_refused(plain_backup, tmp_path):
    _, copy = plain_backup
    found = found_in(copy / "base.tar")
    manifest_path = tmp_path / "backup_manifest"

    shutil.copyfile(copy / "backup_manifest", manifest_path)
    rewrite_manifest(manifest_path, lambda m: m["Files"][3].update(Size=m["Files"][3]["Size"] + 1))
    with pytest.raises(verify.VerifyError, match="has size"):
        verify.compare(verify.read_manifest(manifest_path), found)

    shutil.copyfile(copy / "backup_manifest", manifest_path)
    rewrite_manifest(manifest_path, lambda m: m["Files"].append({**m["Files"][0], "Path": "base/1/999999"}))
    with pytest.raises(verify.VerifyError, match="base/1/999999 is listed in backup_manifest but missing"):
        verify.compare(verify.read_manifest(manifest_path), found)

    shutil.copyfile(copy / "backup_manifest", manifest_path)
    rewrite_manifest(manifest_path, lambda m: m["Files"].pop(5))
    with pytest.raises(verify.VerifyError, match="is in the backup but not in backup_manifest"):
        verify.compare(verify.read_manifest(manifest_path), found)

    text = (copy / "backup_manifest").read_text()
    manifest_path.write_text(text.replace('"Size": ', '"Size":  ', 1))  # one byte more, checksum not redone
    with pytest.raises(verify.VerifyError, match="manifest's checksum does not match"):
        verify.read_manifest(manifest_path)


def test_a_torn_wal_segment_fails_pg_waldump(plain_backup, tmp_path):
    from fleet import pg

    _, copy = plain_backup
    manifest = verify.read_manifest(copy / "backup_manifest")
    wal_dir = tmp_path / "wal"
    pg.give_to_server(wal_dir)
    with tarfile.open(copy / "pg_wal.tar") as tar:
        tar.extractall(wal_dir, filter="data")
    verify.wal_check(pg.tool("pg_waldump"), manifest, wal_dir, lambda argv: pg.run(argv, step="t", as_server=False))
    wal_range = manifest["WAL-Ranges"][0]
    hi, lo = (int(part, 16) for part in wal_range["Start-LSN"].split("/"))
    segsize = next(p for p in wal_dir.iterdir() if len(p.name) == 24).stat().st_size
    lsn, per_id = (hi << 32) | lo, (1 << 32) // segsize
    segno = lsn // segsize
    segment = wal_dir / f"{wal_range['Timeline']:08X}{segno // per_id:08X}{segno % per_id:08X}"
    with open(segment, "r+b") as fh:  # zero the WAL from the backup's start record on
        fh.seek(lsn % segsize)
        fh.write(bytes(4096))
    with pytest.raises(pg.ToolFailed):
        verify.wal_check(pg.tool("pg_waldump"), manifest, wal_dir,
                         lambda argv: pg.run(argv, step="t", as_server=False))


def test_wal_past_the_range_end_is_read_not_written_and_the_range_still_parses(plain_backup, tmp_path):
    """The WAL check writes a segment only up to the manifest's end of WAL (and a page): the rest stays a hole
    of the segment's size, which pg_waldump --end never reads."""
    from fleet import pg

    _, copy = plain_backup
    manifest = verify.read_manifest(copy / "backup_manifest")
    ends = {r["Timeline"]: walnames.parse_lsn(r["End-LSN"]) for r in manifest["WAL-Ranges"]}
    into = tmp_path / "wal"
    pg.give_to_server(into)
    assert verify.unpack_wal(copy / "pg_wal.tar", into, ends) is True
    with tarfile.open(copy / "pg_wal.tar") as tar:
        whole = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile() and "/" not in m.name}
    (timeline, end), = ends.items()
    for name, data in whole.items():
        got = (into / name).read_bytes()
        segment = walnames.parse_wal_name(name, len(data))
        keep = max(0, min(len(data), end - segment.start_lsn(len(data)) + verify.WAL_PAGE))
        assert len(got) == len(data) and got[:keep] == data[:keep] and not any(got[keep:]), name
        if keep < len(data) // 2:
            assert (into / name).stat().st_blocks * 512 < len(data) // 2, "the zeros after the end were written"
    verify.wal_check(pg.tool("pg_waldump"), manifest, into, lambda argv: pg.run(argv, step="t", as_server=False))


@pytest.mark.parametrize("suffix", ["", *COMPRESSORS])
def test_pg_wal_tar_is_unpacked_in_process_flat_and_whole(plain_backup, tmp_path, suffix):
    """The WAL check's unpacking: every segment with its bytes, nothing else, nothing outside the directory;
    a cut archive is refused; lz4 is left to tar (no module for it here)."""
    import subprocess

    _, copy = plain_backup
    plain = (copy / "pg_wal.tar").read_bytes()
    with tarfile.open(copy / "pg_wal.tar") as tar:
        expected = {m.name.removeprefix("./"): tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    expected = {name: data for name, data in expected.items() if "/" not in name}
    assert expected and all(len(name) == 24 for name in expected)  # segments; archive_status/ holds none
    # A hostile member beside them: a name with a directory (or a way out of it) is never written.
    extra = io.BytesIO()
    with tarfile.open(fileobj=extra, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("../outside", "archive_status/x.done"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    raw = extra.getvalue()[:4 * 512] + plain  # two headers and data blocks, then pg_wal.tar with its end
    data = raw if not suffix else subprocess.run(COMPRESSORS[suffix], input=raw, capture_output=True,
                                                 check=True).stdout
    archive = tmp_path / f"pg_wal.tar{suffix}"
    archive.write_bytes(data)
    into = tmp_path / "wal"
    into.mkdir()
    if suffix == ".lz4":
        assert verify.unpack_wal(archive, into) is False and not any(into.iterdir())
        return
    assert verify.unpack_wal(archive, into) is True
    assert {p.name: p.read_bytes() for p in into.iterdir()} == expected
    assert not (tmp_path / "outside").exists()
    cuts = [data[: len(data) // 2]] + ([data[:-1], data + b"trailing bytes"] if suffix else [])
    for bad in cuts:  # compressed: also cut by its last byte only, or followed by bytes after its end
        shutil.rmtree(into)
        into.mkdir()
        archive.write_bytes(bad)
        with pytest.raises(verify.VerifyError):
            verify.unpack_wal(archive, into)


def test_a_backup_failing_verification_is_failed_and_never_offered(fleet, monkeypatch):
    """The manifest the check reads (pg_basebackup's, while it syncs) disagrees with one file. The bytes are
    altered as they are read: pg_basebackup renames the file at a moment a test cannot hold it to."""
    real = backups._read_manifest_file

    def damaged(dest):
        return rewritten(real(dest), flip_crc)

    monkeypatch.setattr(backups, "_read_manifest_file", damaged)
    backup = failed_backup("checksum mismatch")
    assert "checksum mismatch" in backup.error and "verifying" in backup.error


def failed_backup(why: str):
    """A backup that must fail with `why`: failed, never verified nor offered, its scratch gone."""
    backup = queue_backup("zstd")
    with pytest.raises(StepFailed, match=why):
        run_backup(backup, JobReporter(backup))
    backup.refresh_from_db()
    assert backup.state == JobState.FAILED and not backup.manifest_verified
    assert backup not in restorable_backups()
    assert not (Layout.current().staging / f"verify-{backup.label}").exists()
    return backup


def test_the_check_runs_while_pg_basebackup_syncs(fleet, monkeypatch):
    """Begun at pg_basebackup's "syncing data to disk" (in a thread), not after its exit (in the job's)."""
    import threading

    real, threads = backups._verify, []

    def noted(*args):
        threads.append(threading.current_thread())
        return real(*args)

    monkeypatch.setattr(backups, "_verify", noted)
    backup = queue_backup("zstd")
    run_backup(backup, JobReporter(backup))
    backup.refresh_from_db()
    assert backup.state == JobState.DONE and backup.manifest_verified
    assert len(threads) == 1 and threads[0] is not threading.current_thread()


def test_a_manifest_changed_after_its_check_fails_the_backup(fleet, monkeypatch):
    """The check reads backup_manifest while pg_basebackup syncs; a file changed after that is not offered."""
    real = backups._run_with_progress

    def then_damage(*args):
        real(*args)
        argv = args[0]
        rewrite_manifest(Path(argv[argv.index("-D") + 1]) / "backup_manifest", flip_crc)

    monkeypatch.setattr(backups, "_run_with_progress", then_damage)
    failed_backup("backup_manifest changed after it was verified")


def test_follower_reads_a_file_while_it_is_written(tmp_path):
    import threading

    path, done = tmp_path / "growing", threading.Event()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for n in range(3):
            info = tarfile.TarInfo(f"f{n}")
            info.size = 300_000
            tar.addfile(info, io.BytesIO(bytes([n]) * info.size))
    data = buf.getvalue()
    check = verify.ArchiveCheck(path, done.is_set, "test-verify")
    with open(path, "wb") as fh:  # written in pieces while the check reads
        for at in range(0, len(data), 65536):
            fh.write(data[at:at + 65536])
            fh.flush()
            threading.Event().wait(0.01)
    done.set()
    found = check.result()
    assert {k: v[0] for k, v in found.items()} == {"f0": 300_000, "f1": 300_000, "f2": 300_000}
    assert check.follower.sha256.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("suffix, lowered", [(".zst", 1), (".lz4", 3)])
def test_the_check_yields_the_cpu_while_the_archive_is_written(tmp_path, suffix, lowered):
    """Its threads and any decompressor process run at the lowest priority until pg_basebackup is done, then
    get it back. zstd is decompressed in the check's own thread; lz4 in a process fed by a pump thread."""
    import os
    import subprocess
    import threading
    import time

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("f")
        info.size = 2_000_000
        tar.addfile(info, io.BytesIO(os.urandom(info.size)))
    data = subprocess.run(COMPRESSORS[suffix], input=buf.getvalue(), capture_output=True, check=True).stdout
    path, done = tmp_path / f"base.tar{suffix}", threading.Event()
    path.write_bytes(data[:len(data) // 2])
    check = verify.ArchiveCheck(path, done.is_set, "test-verify")
    normal = os.getpriority(os.PRIO_PROCESS, 0)
    deadline = time.monotonic() + 10
    while len(check.lowered) < lowered and time.monotonic() < deadline:
        time.sleep(0.01)
    ids = list(check.lowered)
    assert len(ids) == lowered and [os.getpriority(os.PRIO_PROCESS, i) for i in ids] == [verify.IDLE_NICE] * lowered
    check.writer_finished()
    assert [os.getpriority(os.PRIO_PROCESS, i) for i in ids] == [normal] * lowered
    with open(path, "ab") as fh:
        fh.write(data[len(data) // 2:])
    done.set()
    assert check.result()["f"][0] == 2_000_000
    finished = verify.ArchiveCheck(path, lambda: True, "test-verify")
    assert finished.result()["f"][0] == 2_000_000 and not finished.lowered  # a finished file: full speed


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_reads_what_tarfile_writes_and_refuses_a_bad_header(fmt):
    import google_crc32c

    files = {"a" * 60 + "/" + "b" * 60: b"x" * 1000, "small": b"", "base/1/1249": bytes(range(256)) * 40}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        tar.addfile(_dir("base"))
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    expected = {n: (len(d), google_crc32c.extend(0, d).to_bytes(4, "little").hex()) for n, d in files.items()}
    assert verify.members(io.BytesIO(buf.getvalue())) == expected
    damaged = bytearray(buf.getvalue())
    damaged[600] ^= 1  # inside the second header (the first is the directory's, or pax/GNU's own)
    with pytest.raises(verify.VerifyError):
        verify.members(io.BytesIO(bytes(damaged)))


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info
