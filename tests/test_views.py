"""Dashboard pages and start actions through Django's test client.

Pages read catalog rows made directly in the test database; start actions
hand their job id to a real Redis broker (no worker: the message is read back
from the queue), and the restore form is checked by the real planner.
"""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from pitrsite.jobs import JobState
from restores.models import RestoreJob
from walcatalog.models import BaseBackup
from tests.dashboard_data import make_backup, make_restore, make_segments

PAGES = ["/", "/overview.json", "/timeline/", "/backups/", "/restores/", "/restores/new/"]
ACTIONS = ["/backups/start/", "/restores/start/"]


@pytest.fixture
def catalog(db, no_fleet):
    """Timeline 1 with a gap at segments 40..41, timeline 2 after it, one verified backup, a partial."""
    start = timezone.now() - timedelta(hours=2)
    make_segments(1, [n for n in range(1, 80) if n not in (40, 41)], start, timedelta(minutes=1))
    make_segments(2, range(80, 100), start + timedelta(minutes=80), timedelta(minutes=1), partial_last=True)
    backup = make_backup(1, 10, start + timedelta(minutes=10))
    return {"start": start, "backup": backup}


@pytest.mark.parametrize("url", PAGES + ["/backups/1/", "/restores/1/", "/jobs/backup/1.json"])
def test_pages_need_login(db, url):
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(settings.LOGIN_URL + "?next=")


@pytest.mark.parametrize("url", ACTIONS)
def test_actions_need_login(db, url):
    response = Client().post(url, {"compression": "gzip"})
    assert response.status_code == 302 and response["Location"].startswith(settings.LOGIN_URL)


@pytest.mark.parametrize("url", ACTIONS)
def test_actions_refuse_non_staff(viewer, url):
    assert viewer.post(url, {"compression": "gzip", "kind": "latest"}).status_code == 403
    assert not BaseBackup.objects.exists() and not RestoreJob.objects.exists()


@pytest.mark.parametrize("url", ACTIONS)
def test_actions_refuse_get(staff, url):
    assert staff.get(url).status_code == 405


@pytest.mark.parametrize("url", ACTIONS)
def test_actions_need_csrf_token(db, url):
    client = Client(enforce_csrf_checks=True)
    client.force_login(User.objects.create_user("ops2", password="x", is_staff=True, is_superuser=True))
    assert client.post(url, {"compression": "gzip", "kind": "latest"}).status_code == 403
    assert not BaseBackup.objects.exists() and not RestoreJob.objects.exists()


@pytest.mark.parametrize("url", PAGES)
def test_pages_render_for_any_user(viewer, catalog, url):
    assert viewer.get(url).status_code == 200


def test_overview_shows_catalog_state(viewer, catalog):
    html = viewer.get("/").content.decode()
    assert "000000010000000000000000" not in html
    assert "00000001000000000000004F" in html  # newest complete segment of timeline 1
    assert "000000020000000000000063.partial" in html and "341.3" in html  # the partial and its size (1/3 MiB)
    gaps = re.search(r'<dd id="gaps" class="(\w+)">(.*?)</dd>', html, re.S)
    assert gaps.group(1) == "bad" and "000000010000000000000028..000000010000000000000029" in gaps.group(2)
    assert catalog["backup"].label in html
    assert "Not fully protected" in html  # capture is not running in this test, and there is a gap
    assert "local archive: filesystem" in html


def test_overview_gaps_none_is_not_red(viewer, db):
    make_segments(1, range(1, 10), timezone.now() - timedelta(minutes=20), timedelta(minutes=1))
    html = viewer.get("/").content.decode()
    assert re.search(r'<dd id="gaps" class="ok">none</dd>', html)


def test_overview_json(viewer, catalog):
    data = viewer.get("/overview.json").json()
    assert data["segments"] == 77 + 20
    assert [(g["timeline"], g["first"], g["last"]) for g in data["gaps"]] == [(1, 40, 41)]
    assert data["newest"] == {"1": "00000001000000000000004F", "2": "000000020000000000000062"}
    assert data["partial"]["name"] == "000000020000000000000063.partial"
    assert data["last_backup"]["label"] == catalog["backup"].label
    assert data["last_backup"]["age_seconds"] > 3600
    assert data["capture"]["running"] is False


def test_overview_lists_running_jobs(viewer, catalog):
    job = make_restore(backup=catalog["backup"])
    done = make_restore(state=JobState.DONE)
    page = viewer.get("/").content.decode()
    html = page[page.index('id="live-jobs"'):]  # the restore target card names the done one: what it holds
    assert f"/restores/{job.pk}/" in html and f"/restores/{done.pk}/" not in html


def test_timeline_svg_marks_gap_backup_and_window(viewer, catalog):
    html = viewer.get("/timeline/").content.decode()
    svg = html[html.index("<svg"):html.index("</svg>")]
    assert ">TL 1<" in svg and ">TL 2<" in svg
    assert 'class="gap"' in svg and "gap on timeline 1" in svg
    assert f"base backup {catalog['backup'].label}" in svg
    assert 'class="window"' in svg


def test_timeline_aggregates_many_segments(viewer, db):
    make_segments(1, range(1, 20001), timezone.now() - timedelta(days=2), timedelta(seconds=8))
    html = viewer.get("/timeline/").content.decode()
    bars = re.findall(r'<rect class="seg"', html)
    assert 150 <= len(bars) <= 200  # runs of segments, not one node per segment
    total = sum(int(n) for n in re.findall(r"timeline 1: (\d+) segments", html))
    assert total == 20000


def test_timeline_empty_catalog(viewer):
    assert "No WAL segment is in the catalog yet" in viewer.get("/timeline/").content.decode()


def test_backups_list_and_detail(viewer, catalog):
    failed = make_backup(1, 20, timezone.now(), state=JobState.FAILED, verified=False)
    BaseBackup.objects.filter(pk=failed.pk).update(error="failure copying files (pg_basebackup: could not connect)")
    html = viewer.get("/backups/").content.decode()
    assert catalog["backup"].label in html and failed.label in html
    assert 'id="start-backup"' not in html  # only staff see the start button
    detail = viewer.get(f"/backups/{failed.pk}/").content.decode()
    assert "failure copying files (pg_basebackup: could not connect)" in detail
    assert viewer.get("/backups/999999/").status_code == 404


def test_restore_page_and_job_json(viewer, catalog):
    job = make_restore(backup=catalog["backup"], progress_done=3, progress_total=4)
    html = viewer.get(f"/restores/{job.pk}/").content.decode()
    assert 'id="job-live"' in html and f'data-json="/jobs/restore/{job.pk}.json"' in html
    assert "extracting the backup" in html and "replaying WAL" in html
    data = viewer.get(f"/jobs/restore/{job.pk}.json").json()
    assert data["state"] == "running" and data["current_step"] == "replaying WAL"
    assert (data["progress_done"], data["progress_total"], data["percent"]) == (3, 4, 75.0)
    assert data["replay_lsn"] == "0/400000" and data["target_lsn"] == "0/500000"
    assert [s["name"] for s in data["steps"]] == ["extracting the backup", "replaying WAL"]
    assert data["error"] == "" and data["active"] is True
    assert viewer.get("/jobs/nothing/1.json").status_code == 404
    assert viewer.get(f"/jobs/backup/{catalog['backup'].pk}.json").json()["label"] == catalog["backup"].label


def test_backup_start_queues_to_celery(staff, catalog, broker, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post("/backups/start/", {"compression": "gzip"})
    backup = BaseBackup.objects.get(trigger="dashboard")
    assert response.status_code == 302 and response["Location"] == f"/backups/{backup.pk}/"
    assert (backup.state, backup.compression) == (JobState.QUEUED, "gzip")
    assert broker() == [("walcatalog.tasks.run_backup", [backup.pk])]


def test_backup_start_rejects_unknown_compression(staff, broker):
    response = staff.post("/backups/start/", {"compression": "rar"}, follow=True)
    assert "choose a compression" in response.content.decode()
    assert not BaseBackup.objects.exists() and broker() == []


def test_restore_form_shows_window(staff, catalog):
    html = staff.get("/restores/new/").content.decode()
    assert "Recoverable window" in html and 'id="start-restore"' in html
    for kind in ("time", "lsn", "xid", "name", "immediate", "latest"):
        assert f'value="{kind}"' in html


@pytest.mark.parametrize("form, message", [
    ({"kind": "time", "value": "2026-11-27 10:00:00"}, "has no time zone"),
    ({"kind": "time", "value": "yesterday"}, "is not ISO 8601"),
    ({"kind": "lsn", "value": "nonsense"}, "nonsense"),
    ({"kind": "latest", "value": "0/3"}, "a latest target takes no value"),
    ({"kind": "lsn", "value": ""}, "an LSN target needs a value"),
    ({"kind": "immediate", "value": "0/3"}, "an immediate target takes no value"),
    ({"kind": "name", "value": "x", "exclusive": "on"}, "exclusive applies to time, LSN and XID targets"),
    # As a new primary: confirmed, with both ports, under a new name (restores/promote.py says why not).
    ({"kind": "latest", "as_new_primary": "dr", "new_port": "50001", "new_restore_port": "50002"}, "tick Confirm"),
    ({"kind": "latest", "as_new_primary": "dr", "confirm": "on"}, "a new primary needs both ports"),
    ({"kind": "latest", "as_new_primary": "demo", "new_port": "50001", "new_restore_port": "50002", "confirm": "on"},
     "server demo exists already"),
])
def test_restore_rejects_malformed_targets(staff, catalog, broker, form, message):
    response = staff.post("/restores/start/", form)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not RestoreJob.objects.exists() and broker() == []


def test_restore_rejects_impossible_target_with_planner_message(staff, db, broker):
    """No backup at all: the planner's own one-line reason is shown, nothing is queued."""
    from pathlib import Path

    from restores.planner import PlanError, RestoreTarget, plan

    Path(settings.PITR_WAL_ARCHIVE).mkdir(parents=True, exist_ok=True)  # an empty archive: nothing captured yet
    with pytest.raises(PlanError) as expected:
        plan(RestoreTarget(kind="latest"))
    response = staff.post("/restores/start/", {"kind": "latest"})
    assert response.status_code == 400
    html = response.content.decode()
    assert re.search(r'<p class="problem" id="plan-error">(.*?)</p>', html).group(1) == \
        str(expected.value).replace("'", "&#x27;").replace('"', "&quot;")
    assert not RestoreJob.objects.exists() and broker() == []


def test_metrics_link_and_admin_link_for_staff_only(staff, viewer, catalog):
    assert 'href="/admin/"' in staff.get("/").content.decode()
    assert 'href="/admin/"' not in viewer.get("/").content.decode()


def test_backup_start_with_broker_down_fails_the_row(transactional_db, staff):
    """No Redis listening: the row says why it will never run, the user sees the same line.

    transactional_db: outside a test transaction, on_commit runs inside the view, as in production."""
    from pitrsite.celery import app

    saved = app.conf.broker_url, app._pool, app.amqp._producer_pool
    app.conf.broker_url = "redis://127.0.0.1:9/0"  # the discard port: nothing listens on loopback there
    app._pool = app.amqp._producer_pool = None  # new pools for the new URL; the real ones are put back after
    try:
        response = staff.post("/backups/start/", {"compression": "gzip"}, follow=True)
    finally:
        app.conf.broker_url, app._pool, app.amqp._producer_pool = saved
    backup = BaseBackup.objects.get()
    assert backup.state == JobState.FAILED
    assert backup.error.startswith("failure queueing (Celery broker unreachable")
    assert "could not be queued" in response.content.decode()


def test_chaos_pages(viewer, db):
    from tests.dashboard_data import make_chaos_run

    run = make_chaos_run(verdict="failed")
    listing = viewer.get("/chaos/").content.decode()
    assert f"/chaos/{run.pk}/" in listing and "1 / 2" in listing and 'id="start-chaos"' not in listing
    html = viewer.get(f"/chaos/{run.pk}/").content.decode()
    assert '<polyline class="writes"' in html
    assert (html.count('<line class="action"') == 2 and 'class="target target-ok"' in html
            and 'class="target target-bad"' in html)
    table = html[html.index('id="verifications"'):html.index("Chaos actions")]
    assert "exact" in table and "failed" in table and "2: 1498, 1499" in table and "count(*) 1498 / 1500" in table
    assert "capturer_kill" in html and "recovered" in html
    data = viewer.get(f"/jobs/chaos/{run.pk}.json").json()
    assert data["verdict"] == "failed" and len(data["results"]) == 2


def test_chaos_start_denials_and_validation(staff, viewer, db):
    from chaos.models import ChaosRun

    assert viewer.post("/chaos/start/", {"writers": 2}).status_code == 403
    assert staff.get("/chaos/start/").status_code == 405
    response = staff.post("/chaos/start/", {"writers": 2, "duration": 30, "interval": "30-10", "restores": 2},
                          follow=True)
    assert "interval 30-10: need 0 &lt; MIN &lt;= MAX" in response.content.decode()
    assert not ChaosRun.objects.exists()


def test_overview_storage_state(viewer, catalog):
    from walcatalog.models import StorageCopy, WalSegment
    from walcatalog.storage import identity

    segment = WalSegment.objects.filter(is_partial=False).first()
    StorageCopy.objects.create(kind="wal", storage=identity(), key=f"wal/{segment.name}", segment=segment,
                               size=segment.size, sha256="0" * 64, uploaded_at=timezone.now(),
                               verified_at=timezone.now())
    html = viewer.get("/").content.decode()
    complete = WalSegment.objects.filter(is_partial=False).count()
    assert "archive storage: " in html and "copies: 1 WAL segments, 0 backup files" in html
    assert f"complete segments not uploaded yet: {complete - 1}" in html


def test_chaos_plot_line_stops_at_the_newest_counted_second():
    """A live run's series ends at its last saved second; an action after it is no fall to zero commits."""
    import re

    from dashboard import chaos_plot

    series = [[1000, 20], [1001, 20], [1002, 20]]
    action = {"action": "capturer_restart", "started_at": "1970-01-01T00:16:50+00:00",
              "recovered_at": "1970-01-01T00:16:51+00:00"}  # t=1010..1011, long after the series
    svg = chaos_plot.render(series, [action], [])
    points = re.search(r'<polyline class="writes" points="([^"]+)"', svg)[1].split()
    rates = {float(p.split(",")[1]) for p in points}
    assert len(rates) == 1, points  # 20/s throughout: no point at the bottom of the plot
    action_x = float(re.search(r'<line class="action" x1="([\d.]+)"', svg)[1])
    assert max(float(p.split(",")[0]) for p in points) < action_x
