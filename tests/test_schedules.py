"""Scheduled base backups (cron from PITR_BACKUP_SCHEDULE, "disable" turns them off), the backup age alert,
storage use and the /metrics added for issue 14."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.test import Client
from django.utils import timezone

from pitrsite.jobs import JobState
from tests.dashboard_data import make_backup, make_restore, make_segments


@pytest.fixture
def viewer(db) -> Client:
    client = Client()
    client.force_login(User.objects.create_user("viewer", password="x"))
    return client


def metric(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + " ") or line.startswith(name + "{")]


@pytest.mark.parametrize("value, expected", [("0 2 * * *", "0 2 * * *"), ("disable", "disable"),
                                             ("  */15  *  * * 1-5 ", "*/15 * * * 1-5")])
def test_backup_schedule_setting(monkeypatch, value, expected):
    from pitrsite.config import envcron

    monkeypatch.setenv("PITR_TEST_CRON", value)
    assert envcron("PITR_TEST_CRON", "0 2 * * *") == expected


@pytest.mark.parametrize("value, message", [("0 2 * *", "give 5 fields"), ("99 2 * * *", "Invalid end range")])
def test_bad_backup_schedule_is_one_line(monkeypatch, value, message):
    from pitrsite.config import envcron

    monkeypatch.setenv("PITR_TEST_CRON", value)
    with pytest.raises(ImproperlyConfigured, match=message):
        envcron("PITR_TEST_CRON", "disable")


def test_beat_schedules_backups_unless_disabled(settings):
    from pitrsite.celery import app, setup_schedule

    settings.PITR_BACKUP_SCHEDULE = "30 4 * * *"
    app.conf.beat_schedule = {}
    setup_schedule(app)
    entry = app.conf.beat_schedule["base-backup"]
    assert entry["task"] == "walcatalog.tasks.scheduled_backup"
    assert entry["schedule"].hour == {4} and entry["schedule"].minute == {30}
    settings.PITR_BACKUP_SCHEDULE = "disable"
    app.conf.beat_schedule = {}
    setup_schedule(app)
    assert "base-backup" not in app.conf.beat_schedule and "index-wal" in app.conf.beat_schedule


def test_overview_shows_next_backup_and_age_alert(viewer, no_fleet, settings):
    settings.PITR_BACKUP_SCHEDULE = "30 4 * * *"
    settings.PITR_BACKUP_MAX_AGE = 86400.0
    start = timezone.now() - timedelta(days=3)
    make_segments(1, range(1, 20), start, timedelta(minutes=1))
    make_backup(1, 5, start + timedelta(minutes=5))
    html = viewer.get("/").content.decode()
    schedule = html[html.index('id="backup-schedule"'):]
    assert "<code>30 4 * * *</code> (cron) · next " in schedule and " 04:30:00 UTC" in schedule
    assert "the newest base backup ended 3.0 days ago, more than PITR_BACKUP_MAX_AGE (24.0 h)" in html
    text = viewer.get("/metrics").content.decode()
    assert metric(text, "pitr_backup_too_old") == ['pitr_backup_too_old{server="demo"} 1.0']
    nxt = float(metric(text, "pitr_next_scheduled_backup_timestamp_seconds")[0].split()[1])
    assert 0 < nxt - timezone.now().timestamp() <= 86400
    settings.PITR_BACKUP_SCHEDULE = "disable"
    assert "off (PITR_BACKUP_SCHEDULE=disable)" in viewer.get("/").content.decode()


def test_storage_use_and_new_metrics(viewer, no_fleet):
    from walcatalog.models import StorageCopy, WalSegment

    start = timezone.now() - timedelta(hours=1)
    make_segments(1, range(1, 11), start, timedelta(minutes=1))  # 10 segments of 1 MiB
    backup = make_backup(1, 3, start + timedelta(minutes=3))
    backup.path = "/somewhere"
    backup.save()
    segment = WalSegment.objects.first()
    StorageCopy.objects.create(kind="wal", storage="archive", key="wal/x", segment=segment, size=segment.size,
                               sha256="0" * 64, uploaded_at=timezone.now())
    restore = make_restore(state=JobState.DONE, backup=backup, current_step="",
                           promoted_at=timezone.now() - timedelta(minutes=10))
    restore.finished_at = timezone.now() - timedelta(minutes=9)
    restore.save()
    html = viewer.get("/").content.decode()
    storage = html[html.index('id="storage-bytes"'):]
    assert "Local archive</dt><dd>10.0\xa0MB" in storage and "Local backups</dt><dd>4.0\xa0MB" in storage
    assert "Storage archive</dt><dd>1.0\xa0MB" in storage
    text = viewer.get("/metrics").content.decode()
    assert 'pitr_storage_bytes{place="local archive",server="demo"} 1.048576e+07' in text
    assert metric(text, "pitr_last_backup_duration_seconds") == ['pitr_last_backup_duration_seconds{server="demo"} 3.0']
    assert 'pitr_last_backup_size_bytes{kind="raw",server="demo"} 3.145728e+07' in text
    age = float(metric(text, "pitr_last_verified_restore_age_seconds")[0].split()[1])
    assert 530 < age < 600
    assert metric(text, "pitr_oldest_recoverable_timestamp_seconds")
    assert 'pitr_restore_target_state{server="demo",state="stopped"} 1.0' in text
    backlog = float(metric(text, "pitr_upload_backlog_segments")[0].split()[1])
    assert 9 <= backlog <= 10  # complete segments not in the archive storage (one copy may count, in another)
    for name in ("pitr_upload_errors", "pitr_standby_lag_bytes", "pitr_standby_lag_seconds"):
        assert f"# HELP {name} " in text  # listed; a sample once there is a fact (an upload pass, a standby)


@pytest.mark.fleet
@pytest.mark.slow
def test_scheduled_backup_task_takes_a_backup_started_by_beat(fleet, transactional_db):
    """What beat runs on the schedule: a real pg_basebackup, recorded as started by beat."""
    from dashboard.jobs import who
    from pitrsite import periodic
    from walcatalog.models import BaseBackup
    from walcatalog.tasks import scheduled_backup

    pk = scheduled_backup()
    backup = BaseBackup.objects.get(pk=pk)
    assert backup.state == JobState.DONE and backup.restorable and backup.trigger == "beat", backup.error
    assert who(backup) == "beat"
    state = next(t for t in periodic.states() if t["task"] == "scheduled_backup")
    assert state["last_success_at"] and not state["failing"]
