"""The storage layer against each real backend: configuration, keys, verified upload and download."""
from __future__ import annotations

import hashlib

import pytest
from django.core.exceptions import ImproperlyConfigured

from tests.storage_servers import BACKENDS, archive_storage, azurite_server, gcs_emulator, moto_server  # noqa: F401
from tests.test_settings_errors import home  # noqa: F401  (a fresh data home the server account can reach)
from pitrsite.config import archive_storage_setting
from walcatalog import storage as st

each_backend = pytest.mark.parametrize("archive_storage", BACKENDS, indirect=True)


@each_backend
@pytest.mark.parametrize("compression", ["zstd", "none"])
@pytest.mark.django_db
def test_upload_verify_download_and_corruption(archive_storage, compression, tmp_path, settings):
    from fleet import servers

    settings.PITR_STORAGE_WAL_COMPRESSION = compression
    data = b"segment bytes " * 70000  # ~1 MB: more than one read chunk
    source = tmp_path / "000000010000000000000003"
    source.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    server = servers.demo()
    server.system_identifier, server.pg_major = "7000000000000000001", 15
    server.save()
    key = st.wal_key(source.name)
    packed = compression == "zstd"
    assert key == "15-7000000000000000001/wal/00000001/000000010000000000000003" + (".zst" if packed else "")
    assert st.wal_compressed(key) is packed and st.wal_file_name(key) == source.name

    up = st.upload(archive_storage, key, source, sha)
    # The record holds the stored object's size and sha256: what the storage check reads back.
    assert st.sha256_object(archive_storage, key) == (up.size, up.sha256)
    assert (up.size < len(data) / 100) if packed else ((up.size, up.sha256) == (len(data), sha))
    # A second upload of the same key overwrites it (a half-written object from a killed pass is replaced).
    st.upload(archive_storage, key, source, sha)
    st.upload(archive_storage, st.history_key(2), b"1\t0/3000000\tno recovery target specified\n")
    assert st.list_keys(archive_storage, st.area("wal")) == [key, "15-7000000000000000001/wal/history/00000002.history"]
    assert st.list_keys(archive_storage, st.area("backups")) == []

    dest = tmp_path / "restored"
    assert st.download(archive_storage, key, dest, up.sha256, up.size, sha) == up.size
    assert dest.read_bytes() == data
    assert st.fetch_wal(archive_storage, key, tmp_path / "rebuilt") == (up.size, up.sha256, sha)
    assert (tmp_path / "rebuilt").read_bytes() == data

    from django.core.files.base import ContentFile

    archive_storage.save(key, ContentFile(b"other bytes"))  # corrupt the object in the bucket
    dest.unlink()
    with pytest.raises(st.ChecksumError, match=f"{key} in storage .* is corrupted"):
        st.download(archive_storage, key, dest, up.sha256, up.size, sha)
    assert not dest.exists() and not dest.with_name(dest.name + ".download").exists()
    with pytest.raises(st.StorageError, match="is missing from storage"):
        st.download(archive_storage, st.wal_key("000000010000000000000009"), dest, sha)
    if packed:
        # An object that matches its record but holds other WAL, or a cut stream: neither reaches dest.
        other = st.upload(archive_storage, key, b"other segment " * 1000)
        with pytest.raises(st.ChecksumError, match="decompresses to bytes that are not the cataloged segment"):
            st.download(archive_storage, key, dest, other.sha256, other.size, sha)
        cut = st.sha256_object(archive_storage, key)[0] // 2
        with archive_storage.open(key, "rb") as fh:
            head = fh.read(cut)
        archive_storage.save(key, ContentFile(head))
        with pytest.raises(st.ChecksumError, match="ends before its compressed stream does"):
            st.download(archive_storage, key, dest, hashlib.sha256(head).hexdigest(), cut, sha)
        assert not any(p.name.startswith("restored") for p in tmp_path.iterdir())


@each_backend
def test_upload_refuses_a_file_that_changed_since_indexing(archive_storage, tmp_path):
    source = tmp_path / "000000010000000000000004"
    source.write_bytes(b"new bytes")
    with pytest.raises(st.ChecksumError, match="changed since it was indexed"):
        st.upload(archive_storage, "wal/00000001/" + source.name, source, "0" * 64)


def test_configuration_errors_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PITR_STORAGE_BACKEND", "s3")
    monkeypatch.delenv("PITR_STORAGE_S3_BUCKET", raising=False)
    with pytest.raises(ImproperlyConfigured, match="PITR_STORAGE_BACKEND=s3 needs PITR_STORAGE_S3_BUCKET"):
        archive_storage_setting(tmp_path)
    monkeypatch.setenv("PITR_STORAGE_BACKEND", "ftp")
    with pytest.raises(ImproperlyConfigured, match="PITR_STORAGE_BACKEND='ftp' is not one of filesystem, s3"):
        archive_storage_setting(tmp_path)
    monkeypatch.setenv("PITR_STORAGE_BACKEND", "s3")
    monkeypatch.setenv("PITR_STORAGE_S3_BUCKET", "b")
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("PITR_STORAGE_S3_SECRET_ACCESS_KEY_FILE", str(secret))
    options = archive_storage_setting(tmp_path)["OPTIONS"]
    assert options["secret_key"] == "s3cret" and options["bucket_name"] == "b"


def test_bad_storage_setting_is_one_line_from_manage(home):
    from tests.test_settings_errors import clean_env, one_line_error, run_manage

    line = one_line_error(run_manage(clean_env(home, PITR_STORAGE_BACKEND="s3"), "upload"))
    assert "PITR_STORAGE_BACKEND=s3 needs PITR_STORAGE_S3_BUCKET" in line


def test_retries_stop_at_errors_another_attempt_cannot_mend():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"

    assert st.with_retries(flaky, "flaky", attempts=4, backoff=0.01) == "ok" and len(calls) == 3
    for error in (FileNotFoundError("gone"), st.LocalChanged("changed")):
        calls.clear()

        def fails(error=error):
            calls.append(1)
            raise error

        with pytest.raises(type(error)):
            st.with_retries(fails, "fails", attempts=4, backoff=0.01)
        assert len(calls) == 1


@pytest.mark.parametrize("backend", ["s3", "azure"])
def test_sdk_retries_do_not_multiply_ours(backend, tmp_path, settings):
    """An endpoint that accepts and drops every connection sees exactly PITR_STORAGE_RETRIES attempts."""
    import socket
    import threading

    from django.core.files.storage import storages

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    accepted, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(1)
            conn.close()  # no HTTP answer: a dropped connection, which every SDK retries by itself

    threading.Thread(target=serve, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    env = {"s3": {"PITR_STORAGE_S3_BUCKET": "b", "PITR_STORAGE_S3_ENDPOINT_URL": endpoint,
                  "PITR_STORAGE_S3_ACCESS_KEY_ID": "k", "PITR_STORAGE_S3_SECRET_ACCESS_KEY": "s",
                  "PITR_STORAGE_S3_REGION": "us-east-1"},
           "azure": {"PITR_STORAGE_AZURE_CONTAINER": "c", "PITR_STORAGE_AZURE_ACCOUNT_NAME": "devstoreaccount1",
                     "PITR_STORAGE_AZURE_ACCOUNT_KEY": "a2V5", "PITR_STORAGE_AZURE_ENDPOINT": endpoint}}[backend]
    mp = pytest.MonkeyPatch()
    try:
        mp.setenv("PITR_STORAGE_BACKEND", backend)
        for name, value in env.items():
            mp.setenv(name, value)
        settings.STORAGES = {**settings.STORAGES, "retry-probe": archive_storage_setting(tmp_path)}
        storage = storages["retry-probe"]
        with pytest.raises(Exception):  # noqa: B017 - each SDK raises its own connection error type
            st.with_retries(lambda: storage.exists("wal/x"), "probe", attempts=3, backoff=0.01)
    finally:
        mp.undo()
        stop.set()
        server.close()
    assert len(accepted) == 3


@pytest.mark.parametrize("archive_storage", ["s3"], indirect=True)
def test_s3_stream_hands_on_bytes_in_order_and_refuses_a_short_range(archive_storage, monkeypatch):
    from django.core.files.base import ContentFile

    data = bytes(range(256)) * 1200 + b"the end"  # 307,207 bytes: five ranges, several chunks each
    archive_storage.save("blobs/base.tar.zst", ContentFile(data))
    monkeypatch.setattr(st, "RANGE", 64 << 10)
    monkeypatch.setattr(st, "RANGE_CHUNK", 16 << 10)
    reader = st.stream(archive_storage, "blobs/base.tar.zst")
    assert isinstance(reader, st.RangeReader)
    pieces = list(iter(reader.read, b""))
    reader.close()
    assert b"".join(pieces) == data
    assert max(len(p) for p in pieces) <= 16 << 10  # handed on as they arrived, not a range at a time

    # The object is shorter than the reader was told: S3 answers the last range short, and read() says so.
    short = st.RangeReader(reader.client, reader.bucket, reader.key, len(data) + 10)
    with pytest.raises(st.StorageError, match=r"came back \d+ bytes long"):
        while short.read():
            pass
    short.close()
