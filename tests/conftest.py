"""Fixtures that start real parts: a PostgreSQL fleet, Redis, a Celery worker.

Everything lives in the private data home chosen by tests/settings.py and
listens on free loopback ports. A missing part fails with what to install.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

PROJECT = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2, detail=None):
    """Poll until predicate() is truthy; fail the test saying what never happened (and detail(), what was seen)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f": {detail()}" if detail is not None else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{seen}")
        time.sleep(interval)


def subprocess_env(**extra: str) -> dict:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PITR_TEST_SUBPROCESS": "1",
            "PYTHONPATH": str(PROJECT), **extra}


def manage(*args: str, check: bool = True, timeout: float = 300,
           env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python manage.py ARGS` as a user would, against the test fleet and test database (env: more settings)."""
    result = subprocess.run([sys.executable, str(PROJECT / "manage.py"), *args], capture_output=True, text=True,
                            env=subprocess_env(**(env or {})), timeout=timeout, cwd=PROJECT)
    if check and result.returncode != 0:
        pytest.fail(f"manage.py {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def fleet():
    """The real fleet: primary, standby, capturer, restore target, up for the whole session."""
    from fleet import pg
    from fleet.local import LocalDriver
    from pitrsite.errors import FleetError

    try:
        pg.bindir()
    except FleetError as exc:
        pytest.fail(f"{exc} (the fleet tests need the PostgreSQL 15 server: apt-get install postgresql)")
    driver = LocalDriver()
    driver.up()
    yield driver
    for role in ("capturer", "standby", "restore_target", "primary"):
        try:
            if driver.state(role) == "paused":
                driver.resume(role)
            driver.stop(role, mode="immediate") if role != "capturer" else driver.stop(role)
        except FleetError:
            pass


@pytest.fixture
def primary(fleet):
    """An autocommit connection to the primary's application database."""
    from fleet import pg

    with pg.connect(fleet.layout.port("primary")) as conn:
        yield conn


@pytest.fixture(scope="session")
def redis_server():
    binary = shutil.which("redis-server")
    if not binary:
        pytest.fail("redis-server is not installed: apt-get install redis-server")
    port = settings.PITR_REDIS_PORT
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)

    def ready():
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    wait_for(ready, 10, f"redis-server on port {port}")
    yield settings.CELERY_BROKER_URL
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def celery_worker_env() -> dict:
    """Extra environment of the celery_worker subprocess; a module overrides it (a beat interval, say)."""
    return {}


@pytest.fixture
def celery_worker(redis_server, transactional_db, fleet, celery_worker_env):
    """A real Celery worker with beat embedded, against the test database and fleet."""
    logfile = Path(settings.PITR_HOME) / "logs" / "celery-test.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "pitrsite", "worker", "--beat", "--pool=solo", "--loglevel=INFO",
             "--schedule", str(Path(settings.PITR_HOME) / "celerybeat-schedule")],
            stdout=log, stderr=subprocess.STDOUT, env=subprocess_env(**celery_worker_env), cwd=PROJECT,
            start_new_session=True)
    wait_for(lambda: b"ready." in logfile.read_bytes() or proc.poll() is not None, 60, "the Celery worker to start")
    if proc.poll() is not None:
        pytest.fail(f"the Celery worker exited with {proc.returncode}: see {logfile}")
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def pytest_sessionfinish(session, exitstatus):
    home = os.environ.get("PITR_TEST_HOME")
    if home and not os.environ.get("PITR_KEEP_TEST_HOME") and os.environ.get("PITR_TEST_SUBPROCESS") is None:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def no_fleet(settings, tmp_path):
    """Point the fleet settings at an empty home and a closed port: 'nothing is running', whatever
    the session fleet is doing (status, capture and metrics then read nothing from it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    settings.PITR_HOME = tmp_path
    settings.PITR_WAL_ARCHIVE = tmp_path / "wal_archive"
    settings.PITR_BACKUP_DIR = tmp_path / "backups"
    settings.PITR_PRIMARY_PORT = settings.PITR_STANDBY_PORT = settings.PITR_RESTORE_PORT = closed
    return tmp_path


def logged_in(username: str, **flags: bool):
    """A test client logged in as a new user (flags: is_staff, is_superuser)."""
    from django.contrib.auth.models import User
    from django.test import Client

    client = Client()
    client.force_login(User.objects.create_user(username, password="x", **flags))
    return client


@pytest.fixture
def staff(db):
    return logged_in("ops", is_staff=True, is_superuser=True)


@pytest.fixture
def viewer(db):
    return logged_in("viewer")


@pytest.fixture(autouse=True)
def fresh_dashboard_cache():
    """The dashboard caches catalog answers per catalog state (process memory): each test starts from none."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def broker(redis_server):
    """The real Redis broker, emptied; returns a function listing queued task names and arguments."""
    import base64
    import json

    import redis

    client = redis.Redis.from_url(redis_server)
    client.flushdb()

    def queued() -> list[tuple[str, list]]:
        messages = [json.loads(raw) for raw in client.lrange("celery", 0, -1)]
        return [(m["headers"]["task"], json.loads(base64.b64decode(m["body"]))[0]) for m in messages]
    return queued


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Before the test database is dropped, name whoever still holds a session on it: the drop then
    fails with only 'accessed by other users', which says nothing of who."""
    if nextitem is None:
        _warn_of_other_sessions()
    yield


def _warn_of_other_sessions() -> None:
    import warnings

    db = settings.DATABASES["default"]
    if "postgresql" not in db["ENGINE"]:
        return
    import psycopg
    from django.db import connection

    ours = connection.connection.info.backend_pid if connection.connection is not None else 0
    try:
        with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], password=db["PASSWORD"],
                             dbname="postgres", connect_timeout=5) as conn:
            rows = conn.execute("SELECT pid, application_name, client_port, state, backend_start,"
                                " query FROM pg_stat_activity"
                                " WHERE datname = %s AND pid NOT IN (pg_backend_pid(), %s)",
                                [db["NAME"], ours]).fetchall()
    except psycopg.Error as exc:
        warnings.warn(f"could not list the test database's sessions: {exc}", stacklevel=1)
        return
    import threading

    threads = ", ".join(t.name for t in threading.enumerate() if t is not threading.main_thread())
    for row in rows:
        warnings.warn("session left on the test database: " + " | ".join(map(str, row))
                      + f" (threads of this process: {threads or 'none'})", stacklevel=1)
