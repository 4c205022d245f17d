"""The default SQLite database survives concurrent writers: WAL journal, busy timeout, IMMEDIATE transactions.

Uploads failed with `database is locked` while the worker, beat and the web server wrote at once.
Run in a child process on a SQLite database of its own, configured from DATABASE_URL exactly as a
default installation is, so these run whatever database the suite itself uses.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading

from tests.conftest import PROJECT

PROBE = """
import json, os, time, django
from django.db import connection, transaction
django.setup()
with connection.cursor() as cursor:
    cursor.execute("PRAGMA journal_mode")
    journal = cursor.fetchone()[0]
    cursor.execute("CREATE TABLE IF NOT EXISTS t (x integer)")
print(json.dumps({"journal": journal}), flush=True)
input()  # the test takes the write lock, then says go
began = time.monotonic()
with transaction.atomic():  # IMMEDIATE: waits here for the other writer, not failing on a later upgrade
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM t")
        seen = cursor.fetchone()[0]
        cursor.execute("INSERT INTO t VALUES (2)")
print(json.dumps({"waited": time.monotonic() - began, "seen": seen}), flush=True)
"""


def test_a_writer_waits_for_another_instead_of_failing(tmp_path):
    path = tmp_path / "pitr.sqlite3"
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env.update(DJANGO_SETTINGS_MODULE="pitrsite.settings", DATABASE_URL=f"sqlite:///{path}",
               PITR_HOME=str(tmp_path / "home"), PYTHONPATH=str(PROJECT))
    child = subprocess.Popen([sys.executable, "-c", PROBE], env=env, cwd=PROJECT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stdin is not None
    try:
        first = child.stdout.readline()
        assert first, child.stderr.read() if child.stderr else "the probe printed nothing"
        assert json.loads(first) == {"journal": "wal"}  # readers never block the writer
        other = sqlite3.connect(path, isolation_level=None, timeout=5, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO t VALUES (1)")
        released = threading.Timer(1.5, lambda: other.execute("COMMIT"))
        released.start()
        child.stdin.write("go\n")
        child.stdin.flush()
        second = json.loads(child.stdout.readline())
        released.join()
        other.close()
    finally:
        child.kill()
        child.wait()
    assert second["waited"] >= 1.0 and second["seen"] == 1  # it waited for the other commit, then wrote
    rows = sqlite3.connect(path).execute("SELECT x FROM t ORDER BY x").fetchall()
    assert rows == [(1,), (2,)]


def test_the_settings_give_sqlite_its_concurrency_options(tmp_path):
    from pitrsite.config import database_from_url

    options = database_from_url(f"sqlite:///{tmp_path}/x.sqlite3", tmp_path)["OPTIONS"]
    assert options["transaction_mode"] == "IMMEDIATE" and options["timeout"] >= 5
    assert "journal_mode=WAL" in options["init_command"]
