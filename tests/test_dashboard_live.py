"""Issue 14's view-level facts: live chaos pages, one monotone progress bar, one time format, web wording.

Rows are made directly in the test database (tests/dashboard_data.py); the browser tests drive the same
pages in chromium against a real fleet.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from dashboard import progress
from pitrsite.jobs import JobState
from restores.models import RestoreJob
from tests.dashboard_data import make_backup, make_chaos_run, make_segments

TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")


@pytest.fixture
def catalog(db, no_fleet):
    Path(settings.PITR_WAL_ARCHIVE).mkdir(parents=True, exist_ok=True)  # the planner reads the archive
    start = timezone.now() - timedelta(hours=2)
    make_segments(1, range(1, 100), start, timedelta(minutes=1), partial_last=True)
    backup = make_backup(1, 10, start + timedelta(minutes=10))
    from walcatalog.backups import backup_dir

    folder = backup_dir(backup)  # what a restore extracts, so the planner finds the backup held locally
    folder.mkdir(parents=True)
    for name in ("base.tar", "pg_wal.tar", "backup_manifest"):
        (folder / name).write_bytes(b"")
    return {"start": start, "backup": backup}


def steps(*names: str) -> list[dict]:
    """Finished steps, then the current one (the last name)."""
    now = timezone.now().isoformat()
    return [{"name": n, "started_at": now, "seconds": 1.0} for n in names[:-1]] + \
        [{"name": names[-1], "started_at": now, "seconds": None}]


def test_overall_progress_never_goes_backwards():
    """A backup at 75 % of its copy must not drop when verification starts at 0 %."""
    copy, verify = "copying files (pg_basebackup)", "verifying (manifest checksums, pg_waldump)"
    figures = [progress.overall("backup", "running", steps(copy), copy, done, 100)
               for done in (0, 40, 75, 100)]
    figures.append(progress.overall("backup", "running", steps(copy, verify), verify, 0, 100))
    figures.append(progress.overall("backup", "running", steps(copy, verify), verify, 90, 100))
    figures.append(progress.overall("backup", "done", [], "", 0, None))
    assert figures == sorted(figures) and figures[-1] == 100.0, figures
    assert 50 < figures[2] < 56  # 75 % of a step weighing 71 of 100
    # Chaos: the "restoring T i/n" steps are one group whose own progress counts moments.
    chaos = [progress.overall("chaos", "running", steps("checking the fleet", "backing up", "writing with chaos",
                                                        *[f"restoring T {j}/3" for j in range(1, i + 1)]),
                              f"restoring T {i}/3", i - 1, 3) for i in (1, 2, 3)]
    assert chaos == sorted(chaos) and len(set(chaos)) == 3, chaos


def test_step_units():
    assert progress.unit("chaos", "writing with chaos") == "seconds"
    assert progress.unit("chaos", "restoring T 2/5") == "moments"
    assert progress.unit("restore", "staging WAL") == "files"
    assert progress.unit("backup", "copying files (pg_basebackup)") == "bytes"


def test_chaos_page_while_running_shows_live_facts(staff, db):
    """A run in its chaos phase: seconds not bytes, its real steps only, actions and writes so far."""
    run = make_chaos_run(state=JobState.RUNNING, verdict="")
    run.verifications, run.progress_done, run.progress_total, run.finished_at = [], 8, 30, None
    run.steps = steps("checking the fleet", "backing up", "writing with chaos")
    run.save()
    html = staff.get(f"/chaos/{run.pk}/").content.decode()
    assert 'id="verdict">running<' in html  # not "pending" while it runs
    assert "8.0 s of 30 s" in html and "bytes" not in html[html.index('id="job-live"'):html.index("</section>")]
    assert "restoring and verifying" not in html  # the phantom step is gone
    assert 'data-expected="checking the fleet|backing up|writing with chaos|settling' in html
    assert "capturer_kill" in html and "1600 rows committed" in html
    assert 'id="chaos-head" data-live-block' in html and 'id="chaos-live" data-live-block' in html
    data = staff.get(f"/jobs/chaos/{run.pk}.json").json()
    assert data["progress_unit"] == "seconds" and data["percent"] == pytest.approx(26.7, abs=0.1)
    assert 10 < data["overall_percent"] < 30  # fleet and backup done, 8 s of 30 s of the chaos phase
    events = html[html.index('id="events"'):]
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC", events)  # actions: date, ms and zone


def test_times_carry_date_and_zone(staff, catalog):
    for url in ("/", "/backups/", f"/backups/{catalog['backup'].pk}/", "/restores/new/"):
        html = staff.get(url).content.decode()
        assert TIME.search(html), url
    overview = staff.get("/").content.decode()
    assert not re.search(r"\d\d:\d\d:\d\d(\.\d+)?\+00:00", overview)  # the window's own line too
    labels = staff.get("/restores/new/").content.decode()
    assert re.search(r'value="lsn"[^>]*>\s*LSN\s*</label>', labels) and "XID (transaction id)" in labels
    assert "+00:00" not in labels  # the window once, in the one format (the form accepts it back)


def test_time_targets_charts_and_admin_in_the_one_format(staff, catalog):
    """A time target reads as the pages show times (lists, header, target card, admin), and so do the chaos
    plot's axis (with the date and the zone), its marks and the verified moments T."""
    from tests.dashboard_data import make_restore

    moment = catalog["start"].replace(microsecond=250_000) + timedelta(minutes=30)
    job = make_restore(state=JobState.DONE, backup=catalog["backup"], current_step="", target_kind="time",
                       target_value=moment.isoformat(), promoted_at=timezone.now())
    shown = f"time {moment:%Y-%m-%d %H:%M:%S}.250 UTC"
    for url in ("/restores/", f"/restores/{job.pk}/", "/"):
        page = staff.get(url).content.decode()
        assert shown in page and moment.isoformat() not in page, url
    admin = staff.get("/admin/restores/restorejob/").content.decode()
    assert f'<td class="field-target"><a href="/admin/restores/restorejob/{job.pk}/change/">{shown}</a>' in admin
    run = make_chaos_run()
    page = html.unescape(staff.get(f"/chaos/{run.pk}/").content.decode())
    svg = page[page.index('<svg class="timeline chaos"'):page.index("</svg>")]
    assert re.search(r'class="tick"[^>]*>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d<', svg) and "times in UTC" in svg
    assert re.search(r"<title>capturer_kill: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC → ", svg)
    table = page[page.index('id="verifications"'):page.index('id="events"')]
    assert re.search(r">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} UTC<", table)
    assert not re.search(r"T\d\d:\d\d:\d\d", svg + re.sub(r'title="[^"]*"', "", table))  # exact T: hover


def test_restore_form_accepts_the_displayed_time_format(staff, catalog, broker, django_capture_on_commit_callbacks):
    moment = catalog["start"] + timedelta(minutes=30)
    shown = f"{moment:%Y-%m-%d %H:%M:%S} UTC"
    page = staff.get("/restores/new/").content.decode()
    assert 'type="datetime-local"' in page
    example = re.search(r"time with zone \((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC)\)", page).group(1)
    shown_example = datetime.strptime(example, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=dt_timezone.utc)
    assert catalog["start"] + timedelta(minutes=10) <= shown_example <= timezone.now()  # inside the window
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post("/restores/start/", {"kind": "time", "value": shown})
    assert response.status_code == 302, response.content.decode()[:3000]
    job = RestoreJob.objects.get()
    assert job.target_value == moment.replace(microsecond=0).isoformat()
    assert broker() == [("restores.tasks.run_restore", [job.pk])]


def test_restore_form_picker_fills_an_empty_value(staff, catalog, broker):
    moment = (catalog["start"] + timedelta(minutes=31)).replace(microsecond=0)
    response = staff.post("/restores/start/", {"kind": "time", "picked": f"{moment:%Y-%m-%dT%H:%M:%S}"})
    assert response.status_code == 302, response.content.decode()[:3000]
    assert RestoreJob.objects.get().target_value == moment.isoformat()


def test_queueing_a_restore_runs_no_index_pass_in_the_request(staff, catalog, broker, monkeypatch,
                                                              django_capture_on_commit_callbacks):
    """Issue 9: the request that queues a valid restore plans against the catalog as it is; the worker indexes
    and plans for real (an index pass runs pg_waldump, far too slow for a web request)."""
    from walcatalog import indexer

    passes = []
    monkeypatch.setattr(indexer, "index_archive", lambda *a, **k: passes.append(1))
    moment = catalog["start"] + timedelta(minutes=30)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post("/restores/start/", {"kind": "time", "value": moment.isoformat()})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert passes == [] and broker() == [("restores.tasks.run_restore", [RestoreJob.objects.get().pk])]


def test_web_errors_name_no_cli_flags(staff, catalog, broker):
    late = timezone.now() + timedelta(days=1)
    html = staff.post("/restores/start/", {"kind": "time", "value": f"{late:%Y-%m-%d %H:%M:%S} UTC"}).content.decode()
    error = re.search(r'id="plan-error">(.*?)</p>', html).group(1)
    assert "after the newest captured commit" in error and "--" not in error and "choose the latest target" in error
    assert TIME.search(error) and "+00:00" not in error  # the planner's times in the one format
    # The disaster-recovery path's refusal, worded for the form: no --as-new-primary.
    html = staff.post("/restores/start/", {"kind": "latest", "as_new_primary": "demo", "new_port": "40001",
                                           "new_restore_port": "40002", "confirm": "on"}).content.decode()
    error = re.search(r'id="plan-error">(.*?)</p>', html).group(1)
    assert "server demo exists already: As new primary needs a new name" in error, error


@pytest.mark.parametrize("message, web", [
    ("the indexer_kill action needs ...: run `python manage.py services up`, or leave it out with --actions",
     "the indexer_kill action needs ...: run `python manage.py services up`, or leave it out of Actions"),
    ("sales holds 2 backup(s): remove it with --forget to drop its catalog",
     "sales holds 2 backup(s): remove it with the action that forgets its catalog"),
    ("--port and --restore-port must differ", "port and restore port must differ"),
    ("choose exactly one of --target-time, --target-lsn, --immediate, --latest",
     "choose exactly one of time, LSN, an immediate target, latest"),
    ("target 2026-12-01T19:21:53.250000+00:00 is after the newest captured commit: use --latest",
     "target 2026-12-01 19:21:53.250 UTC is after the newest captured commit: choose the latest target"),
])
def test_web_message_rewords_every_flag(message, web):
    from dashboard.words import web_message

    assert web_message(message) == web


def test_who_started_each_job(staff, catalog, broker, django_capture_on_commit_callbacks):
    from walcatalog.models import BaseBackup

    with django_capture_on_commit_callbacks(execute=True):
        staff.post("/backups/start/", {"compression": "gzip"})
    mine = BaseBackup.objects.get(trigger="dashboard")
    assert mine.started_by == "ops"
    BaseBackup.objects.filter(pk=catalog["backup"].pk).update(trigger="celery")
    html = staff.get("/backups/").content.decode()
    cells = re.findall(r'<td class="who">(.*?)</td>', html)
    assert sorted(cells) == ["beat", "ops"], cells
    assert 'id="job-who">ops<' in staff.get(f"/backups/{mine.pk}/").content.decode()
    admin = staff.get("/admin/walcatalog/basebackup/").content.decode()
    assert "Started by" in admin and ">ops<" in admin


def test_admin_columns_are_named_for_people(staff, catalog):
    html = staff.get("/admin/walcatalog/walsegment/").content.decode()
    assert "Start LSN" in html and "End LSN" in html and "lsn text" not in html.lower()
    html = staff.get("/admin/walcatalog/basebackup/").content.decode()
    assert "Stop LSN" in html and "lsn text" not in html.lower()
    assert TIME.search(html)  # the admin shows times in the dashboard's one format


def test_viewer_refused_action_gets_a_page_saying_why(viewer):
    response = viewer.post("/backups/start/", {"compression": "gzip"})
    assert response.status_code == 403
    html = response.content.decode()
    assert 'id="refused">starting jobs needs a staff account<' in html and "viewer" in html


def test_restore_target_facts_and_recovery_details(staff, catalog, settings):
    from tests.dashboard_data import make_restore

    older = make_restore(state=JobState.DONE, backup=catalog["backup"], current_step="",
                         promoted_at=timezone.now() - timedelta(hours=1))
    job = make_restore(state=JobState.INTERRUPTED, backup=catalog["backup"], current_step="replaying WAL",
                       finished_at=timezone.now(), plan={"recovery": {"recovery_target_lsn": "0/5000000",
                                                                      "recovery_target_inclusive": "on"},
                                                         "stop_reason": "reached target"})
    make_restore(state=JobState.FAILED, current_step="planning", error="failure planning (no)")  # never touched it
    assert older.started_at < job.started_at
    overview = staff.get("/").content.decode()
    card = html.unescape(overview[overview.index('id="restore-target"'):])
    assert '<span class="state state-queued">stopped<' in card  # nothing runs on its port
    assert f"restore #{job.pk}</a> to lsn 0/5000000" in card and "interrupted" in card
    port = settings.PITR_RESTORE_PORT
    assert f'psql "host=127.0.0.1 port={port} dbname={settings.PITR_DBNAME} user=' in card
    page = staff.get(f"/restores/{job.pk}/").content.decode()
    assert "recovery_target_lsn = '0/5000000'" in html.unescape(page) and 'id="stop-reason">reached target<' in page
    assert 'id="target-live" data-live-block' in page and 'id="standby"' in overview


def test_backups_page_and_pinning(staff, catalog, settings):
    from walcatalog.models import BaseBackup

    newer = make_backup(1, 50, catalog["start"] + timedelta(minutes=50))
    settings.PITR_RETENTION_KEEP_BACKUPS = 1
    html = staff.get("/backups/").content.decode()
    old_row = html[html.index(f'id="backup-{catalog["backup"].pk}"'):]
    old_row = old_row[:old_row.index("</tr>")]
    assert ">obsolete<" in old_row and "3.0 s" in old_row and f"<td>{catalog['backup'].compression}</td>" in old_row
    new_row = html[html.index(f'id="backup-{newer.pk}"'):]
    assert ">kept<" in new_row[:new_row.index("</tr>")]
    assert "0/A00028" in old_row and "0/A01000" in old_row  # the WAL range it covers
    staff.post(f"/backups/{catalog['backup'].pk}/pin/", {"pinned": "1"})
    assert BaseBackup.objects.get(pk=catalog["backup"].pk).pinned
    assert ">pinned<" in staff.get("/backups/").content.decode()
    staff.post(f"/backups/{catalog['backup'].pk}/pin/", {"pinned": "0"})
    assert not BaseBackup.objects.get(pk=catalog["backup"].pk).pinned


def test_restore_form_pickers_and_prefill(staff, catalog):
    from walcatalog.models import RestorePoint, WalSegment

    segment = WalSegment.objects.get(timeline=1, segno=60)
    RestorePoint.objects.create(name="before-upgrade", timeline=1, lsn=segment.start_lsn + 200, segment=segment)
    html = staff.get("/restores/new/").content.decode()
    points = html[html.index('id="restore-points"'):html.index('id="backup-windows"')]
    assert "before-upgrade" in points and "0/3C000C8" in points and TIME.search(points)
    assert 'href="?kind=name&amp;value=before-upgrade"' in points
    windows = html[html.index('id="backup-windows"'):]
    assert f'href="?backup={catalog["backup"].pk}&amp;kind=latest"' in windows and TIME.search(windows)
    # "restore to here" from the timeline lands on the form with the moment filled in.
    shown = "2026-12-01 19:21:53 UTC"
    page = staff.get("/restores/new/", {"kind": "time", "value": shown}).content.decode()
    assert f'name="value" value="{shown}"' in page and 'value="time" required id="id_kind_0" checked' in page


def test_timeline_plot_marks_idle_restore_points_and_axis_dates(staff, db, no_fleet):
    from walcatalog.models import RestorePoint, WalSegment

    start = timezone.now() - timedelta(hours=3)
    make_segments(1, range(1, 30), start, timedelta(minutes=1))
    make_segments(1, range(30, 60), start + timedelta(hours=2), timedelta(minutes=1))  # an idle hour between
    segment = WalSegment.objects.get(segno=40)
    RestorePoint.objects.create(name="rp1", timeline=1, lsn=segment.start_lsn + 8, segment=segment)
    html = staff.get("/timeline/").content.decode()
    svg = html[html.index("<svg"):html.index("</svg>")]
    assert 'data-start="' in svg and 'data-plot-width="' in svg
    assert 'class="idle"' in svg and "idle: no WAL written" in svg and 'class="gap"' not in svg
    assert 'class="restore-point"' in svg and "restore point rp1" in svg
    assert re.search(r'class="tick"[^>]*>\d{4}-\d\d-\d\d \d\d:\d\d<', svg) and "times in UTC" in svg
    assert 'viewBox="0 0 960 ' in svg and int(re.search(r'viewBox="0 0 960 (\d+)"', svg).group(1)) >= 140


def test_job_log_on_the_page_and_downloadable(staff, catalog):
    from pitrsite.jobs import JobReporter

    reporter = JobReporter(catalog["backup"])
    reporter.step("copying files (pg_basebackup)")
    reporter.log("pg_basebackup: checkpoint completed")
    page = staff.get(f"/backups/{catalog['backup'].pk}/").content.decode()
    log = page[page.index('id="job-log"'):]
    assert "== copying files (pg_basebackup)" in log and "pg_basebackup: checkpoint completed" in log
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} pg_basebackup", log)
    response = staff.get(f"/jobs/backup/{catalog['backup'].pk}/log.txt")
    assert response["Content-Disposition"] == f'attachment; filename="backup-{catalog["backup"].pk}.log"'
    assert response.content.decode().splitlines()[-1].endswith("pg_basebackup: checkpoint completed")
