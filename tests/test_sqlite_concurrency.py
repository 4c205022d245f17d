"""The default SQLite database survives concurrent writers: WAL journal, busy timeout, IMMEDIATE transactions.

Uploads failed with `database is locked` while the worker, beat and the web server wrote at once.
"""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from django.db import connection, transaction

from walcatalog.models import Timeline


@pytest.fixture
def sqlite_db(transactional_db):
    if connection.vendor != "sqlite":
        pytest.skip("this database is PostgreSQL: the SQLite settings do not apply")  # scripts/pitr test runs on PG
    return connection.settings_dict["NAME"]


def test_journal_is_wal(sqlite_db):
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA journal_mode")
        assert cursor.fetchone()[0] == "wal"


def test_a_writer_waits_for_another_instead_of_failing(sqlite_db):
    """Another process holds the write lock for 1.5 s: our write waits and succeeds."""
    other = sqlite3.connect(sqlite_db, isolation_level=None, timeout=5, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO walcatalog_timeline (tli, history, history_sha256, first_seen_at) "
                  "VALUES (7, '', '', '2026-01-01 00:00:00')")
    released = threading.Timer(1.5, lambda: other.execute("COMMIT"))
    released.start()
    began = time.monotonic()
    try:
        with transaction.atomic():  # IMMEDIATE: waits here, not failing on a later upgrade
            assert Timeline.objects.filter(tli=7).count() == 1  # the other writer's row, committed
            Timeline.objects.create(tli=8)
    finally:
        released.join()
        other.close()
    assert time.monotonic() - began >= 1.0
    assert set(Timeline.objects.values_list("tli", flat=True)) == {7, 8}
