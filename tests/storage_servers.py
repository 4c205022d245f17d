"""Real storage servers on loopback ports, started by the suite, and the STORAGES entries that reach them.

- S3: moto in server mode (a real HTTP S3 endpoint), from PyPI (moto[server]).
- Azure Blob: Azurite from npm (`scripts/pitr test` installs it into .cache/azurite), telemetry off.
- GCS: gcp-storage-emulator from PyPI, reached through STORAGE_EMULATOR_HOST as google-cloud-storage honours it.

Each server is started once per session; every test gets a fresh bucket/container, so tests never see each
other's objects. A missing server fails the test with what to install.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import PROJECT, wait_for

AZURITE_VERSION = "3.35.0"  # the last release that runs on node 20
AZURITE_BLOB = PROJECT / ".cache" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's documented, public development key (not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
BACKENDS = ("filesystem", "s3", "azure", "gcs")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def moto_server():
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        pytest.fail("moto server is not installed: pip install 'moto[server]' (it is in requirements.txt)")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_for(lambda: _listening(port), 20, f"moto S3 server on port {port}")
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def azurite_server(tmp_path_factory):
    if not AZURITE_BLOB.exists():
        pytest.fail(f"Azurite is not installed ({AZURITE_BLOB} missing): run `scripts/pitr test` once, or "
                    f"npm install --prefix .cache/azurite azurite@{AZURITE_VERSION}")
    port, location = free_port(), tmp_path_factory.mktemp("azurite")
    log = open(location / "azurite.log", "wb")
    proc = subprocess.Popen([str(AZURITE_BLOB), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                             "--location", str(location), "--skipApiVersionCheck", "--loose", "--disableTelemetry"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: _listening(port) or proc.poll() is not None, 30, f"Azurite on port {port}")
    if proc.poll() is not None:
        pytest.fail(f"Azurite exited with {proc.returncode}: see {location / 'azurite.log'}")
    yield f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    _stop(proc)
    log.close()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    binary = shutil.which("gcp-storage-emulator", path=str(Path(sys.executable).parent)) or shutil.which(
        "gcp-storage-emulator")
    if not binary:
        pytest.fail("gcp-storage-emulator is not installed: pip install gcp-storage-emulator (in requirements.txt)")
    port, logdir = free_port(), tmp_path_factory.mktemp("gcs")
    log = open(logdir / "gcs.log", "wb")
    proc = subprocess.Popen([binary, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(lambda: _listening(port) or proc.poll() is not None, 30, f"gcp-storage-emulator on port {port}")
    if proc.poll() is not None:
        pytest.fail(f"gcp-storage-emulator exited with {proc.returncode}: see {logdir / 'gcs.log'}")
    host = f"http://127.0.0.1:{port}"
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host  # google-cloud-storage reads it when a client is made
    yield host
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous
    _stop(proc)
    log.close()


# --- one fresh bucket per test, as an environment and as a STORAGES entry -----------------------------
def storage_env(backend: str, request, tmp_path: Path) -> dict[str, str]:
    """PITR_STORAGE_* variables for a fresh, empty bucket/container/directory on the given backend."""
    name = f"pitr-{uuid.uuid4().hex[:12]}"
    if backend == "filesystem":
        return {"PITR_STORAGE_BACKEND": "filesystem", "PITR_STORAGE_DIR": str(tmp_path / "storage")}
    if backend == "s3":
        endpoint = request.getfixturevalue("moto_server")
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").create_bucket(Bucket=name)
        return {"PITR_STORAGE_BACKEND": "s3", "PITR_STORAGE_S3_BUCKET": name, "PITR_STORAGE_S3_ENDPOINT_URL": endpoint,
                "PITR_STORAGE_S3_REGION": "us-east-1", "PITR_STORAGE_S3_ACCESS_KEY_ID": "test",
                "PITR_STORAGE_S3_SECRET_ACCESS_KEY": "test"}
    if backend == "azure":
        endpoint = request.getfixturevalue("azurite_server")
        env = {"PITR_STORAGE_BACKEND": "azure", "PITR_STORAGE_AZURE_CONTAINER": name,
               "PITR_STORAGE_AZURE_ACCOUNT_NAME": AZURITE_ACCOUNT, "PITR_STORAGE_AZURE_ACCOUNT_KEY": AZURITE_KEY,
               "PITR_STORAGE_AZURE_ENDPOINT": endpoint}
        from azure.storage.blob import BlobServiceClient

        conn = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={endpoint};")
        BlobServiceClient.from_connection_string(conn).create_container(name)
        return env
    if backend == "gcs":
        request.getfixturevalue("gcs_emulator")
        from google.cloud import storage as gcs

        gcs.Client(project="pitr-test").create_bucket(name)
        return {"PITR_STORAGE_BACKEND": "gcs", "PITR_STORAGE_GCS_BUCKET": name, "PITR_STORAGE_GCS_PROJECT": "pitr-test"}
    raise ValueError(backend)


def storage_setting(env: dict[str, str], home: Path) -> dict:
    """The STORAGES["archive"] entry settings.py would build from these variables."""
    from pitrsite.config import archive_storage_setting

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return archive_storage_setting(home)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def archive_storage(request, settings, tmp_path):
    """Point STORAGES["archive"] at a fresh, empty place on the backend the test is parametrized with."""
    backend = request.param if hasattr(request, "param") else "filesystem"
    env = storage_env(backend, request, tmp_path)
    settings.STORAGES = {**settings.STORAGES, "archive": storage_setting(env, tmp_path)}
    from django.core.files.storage import storages

    yield storages["archive"]
