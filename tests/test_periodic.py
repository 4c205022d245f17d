"""Beat tasks skip quietly only while another pass holds their lock; any other failure is recorded and shows
on the overview and in /metrics until a pass succeeds again."""
from __future__ import annotations

from datetime import datetime

import pytest

from pitrsite import locks, periodic


@pytest.fixture
def home(no_fleet, settings):
    settings.PITR_WAL_ARCHIVE = no_fleet / "no-such-archive"
    return no_fleet


def test_a_failing_beat_task_shows_until_it_passes_again(home, db, client, settings):
    from django.contrib.auth.models import User

    from dashboard.status import overview
    from walcatalog.tasks import index_wal

    assert index_wal() is None  # the archive is missing: a failure, not a crash of the worker
    [state] = periodic.states()
    assert state["task"] == "index_wal" and state["failing"] and state["errors"] == 1 and state["last_error"]
    problems = overview(with_capture=False).problems
    assert any(p.startswith("periodic task index_wal failing since ") for p in problems), problems
    client.force_login(User.objects.create_superuser("admin", "a@example.org", "pw"))
    text = client.get("/metrics").content.decode()
    assert 'pitr_periodic_task_failing{server="demo",task="index_wal"} 1.0' in text
    assert 'pitr_periodic_task_errors{server="demo",task="index_wal"} 1.0' in text

    (home / "no-such-archive").mkdir()
    assert index_wal() is not None
    [state] = periodic.states()
    assert not state["failing"] and state["last_success_at"] and state["errors"] == 1
    assert not any(p.startswith("periodic task") for p in overview(with_capture=False).problems)
    text = client.get("/metrics").content.decode()
    assert 'pitr_periodic_task_failing{server="demo",task="index_wal"} 0.0' in text
    last = next(line for line in text.splitlines()
                if line.startswith('pitr_periodic_task_last_success_timestamp_seconds{server="demo",task="index_wal"}'))
    assert abs(float(last.split()[1]) - datetime.fromisoformat(state["last_success_at"]).timestamp()) < 1


def test_a_pass_skipped_for_the_lock_is_no_failure(home, db):
    from walcatalog.tasks import index_wal

    (home / "no-such-archive").mkdir()
    with locks.INDEX.held():
        assert index_wal() is None
    assert periodic.states() == []  # neither a success nor a failure: nothing ran
