"""/metrics: Prometheus text parsed by prometheus_client's own parser; who may read it."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from pitrsite.jobs import JobState
from tests.dashboard_data import make_backup, make_restore, make_segments


def samples(text: str, server: str = "demo") -> dict[tuple, float]:
    """One server's samples, keyed by name and the other labels: every sample names its server."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = dict(sample.labels)
            assert "server" in labels, sample
            if labels.pop("server") == server:
                found[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return found


@pytest.fixture
def catalog(db, no_fleet):
    start = timezone.now() - timedelta(hours=1)
    make_segments(1, [n for n in range(1, 50) if n != 20], start, timedelta(seconds=30))
    make_segments(2, range(50, 60), start + timedelta(minutes=30), timedelta(seconds=30), partial_last=True)
    backup = make_backup(1, 5, start + timedelta(minutes=3))
    make_restore(backup=backup)
    make_restore(state=JobState.FAILED)
    make_restore(state=JobState.FAILED)
    return {"start": start, "backup": backup}


def test_metrics_parse_and_say_what_the_catalog_holds(catalog):
    response = Client().get("/metrics")  # the test client is 127.0.0.1: loopback, no token configured
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    found = samples(response.content.decode())
    assert found[("pitr_capture_up", ())] == 0  # no fleet runs in this test
    assert found[("pitr_newest_segment_number", (("timeline", "1"),))] == 49
    assert found[("pitr_newest_segment_number", (("timeline", "2"),))] == 58
    assert found[("pitr_wal_gaps", ())] == 1
    assert found[("pitr_wal_segments", ())] == 48 + 10
    assert found[("pitr_partial_segment_bytes", ())] == (1 << 20) // 3
    age = found[("pitr_last_backup_age_seconds", ())]
    assert 57 * 60 - 5 < age < 57 * 60 + 60
    assert found[("pitr_jobs", (("kind", "restore"), ("state", "failed")))] == 2
    assert found[("pitr_jobs", (("kind", "restore"), ("state", "running")))] == 1
    assert found[("pitr_jobs", (("kind", "backup"), ("state", "done")))] == 1
    assert found[("pitr_jobs", (("kind", "backup"), ("state", "queued")))] == 0
    start = found[("pitr_recoverable_window_start_timestamp_seconds", ())]
    end = found[("pitr_recoverable_window_end_timestamp_seconds", ())]
    assert catalog["start"].timestamp() < start < end <= timezone.now().timestamp()


def test_metrics_empty_catalog_has_no_made_up_values(db, no_fleet):
    found = samples(Client().get("/metrics").content.decode())
    assert ("pitr_last_backup_age_seconds", ()) not in found
    assert ("pitr_recoverable_window_start_timestamp_seconds", ()) not in found
    assert ("pitr_storage_newest_commit_age_seconds", ()) not in found  # storage holds no commit yet
    assert found[("pitr_wal_gaps", ())] == 0


def test_metrics_carry_each_server(catalog):
    """Two servers, one scrape: each server's gauges under its own label, from its own catalog."""
    from fleet import servers
    from fleet.models import Server
    from walcatalog.models import WalSegment

    other = Server.objects.create(name="sales", kind="external", host="127.0.0.1", port=1, restore_port=2)
    with servers.using(other):
        make_segments(1, range(1, 4), timezone.now() - timedelta(minutes=5), timedelta(seconds=30))
        assert WalSegment.objects.count() == 3
    text = Client().get("/metrics").content.decode()
    demo, sales = samples(text), samples(text, "sales")
    assert demo[("pitr_wal_segments", ())] == 48 + 10 and sales[("pitr_wal_segments", ())] == 3
    assert sales[("pitr_newest_segment_number", (("timeline", "1"),))] == 3
    assert sales[("pitr_capture_up", ())] == 0 and sales[("pitr_capture_alert", ())] == 1  # unreachable
    assert ("pitr_last_backup_age_seconds", ()) not in sales
    assert sales[("pitr_jobs", (("kind", "restore"), ("state", "failed")))] == 0


def test_metrics_storage_recovery_point(catalog):
    """The age of the newest commit held in storage: that of the newest verified segment copy."""
    from walcatalog.models import StorageCopy, WalSegment
    from walcatalog.storage import identity

    segments = list(WalSegment.objects.filter(is_partial=False).exclude(last_commit_at=None).order_by("-segno")[:2])
    older = segments[1]
    StorageCopy.objects.create(kind="wal", storage=identity(), key=f"x/{older.name}", segment=older, size=1,
                               sha256="0" * 64, uploaded_at=timezone.now(), verified_at=timezone.now())
    StorageCopy.objects.create(kind="wal", storage="s3:another-bucket", key=f"x/{segments[0].name}",
                               segment=segments[0], size=1, sha256="0" * 64, uploaded_at=timezone.now(),
                               verified_at=timezone.now())  # another storage's copy does not count
    found = samples(Client().get("/metrics").content.decode())
    age = found[("pitr_storage_newest_commit_age_seconds", ())]
    expected = (timezone.now() - older.last_commit_at).total_seconds()
    assert expected - 5 < age <= expected + 1


def test_metrics_refused_to_other_hosts_without_token(db):
    response = Client(REMOTE_ADDR="192.0.2.7").get("/metrics")
    assert response.status_code == 403
    assert "PITR_METRICS_TOKEN" in response.content.decode()


def test_metrics_open_to_logged_in_users_from_anywhere(db):
    client = Client(REMOTE_ADDR="192.0.2.7")
    client.force_login(User.objects.create_user("viewer", password="x"))
    assert client.get("/metrics").status_code == 200


def test_metrics_bearer_token(db, settings):
    settings.PITR_METRICS_TOKEN = "s3cret-token"
    remote = Client(REMOTE_ADDR="192.0.2.7")
    assert remote.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200
    wrong = remote.get("/metrics", HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 401 and wrong["WWW-Authenticate"].startswith("Bearer")
    # with a token set, loopback alone is not enough (a reverse proxy makes every client loopback)
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200


def test_metrics_get_only(db):
    assert Client().post("/metrics").status_code == 405
