"""The dashboard in a real browser: Debian's chromium driven by Playwright against a live server.

A real Celery worker (with beat: the indexer runs) and the real fleet do the
work; the browser logs in, sees the overview, starts a backup and watches its
progress bar reach done, starts a restore and watches it promote, starts a
short chaos run and opens it. Screenshots of the main pages go to the test's
data home; to refresh the ones the README shows, run

    PITR_SCREENSHOTS=docs/screenshots scripts/pitr test tests/test_browser.py
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import wait_for

CHROMIUM = "/usr/bin/chromium"
# A test run must not rewrite committed files: screenshots land in the data home unless asked for.
SHOTS = Path(os.environ.get("PITR_SCREENSHOTS") or Path(os.environ["PITR_TEST_HOME"]) / "screenshots")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
PASSWORD = "browser-test-password"

pytestmark = [pytest.mark.fleet, pytest.mark.slow]


@pytest.fixture
def browser(monkeypatch):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (the browser tests drive Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -r requirements.txt")
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()
        # Inside sync_playwright() the test runs in another context (greenlet), so its ORM calls opened a
        # connection of their own, which the test database's teardown would find still open.
        from django.db import connections

        connections.close_all()


def login(browser, base: str, username: str):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(20_000)
    page.goto(base + "/")
    assert "/login/" in page.url  # every page needs a login
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("#log-in")
    page.wait_for_url(base + "/")
    return page


def fleet_driver_state(role: str) -> str:
    from fleet.driver import get_driver

    return get_driver().state(role)


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_viewer_sees_overview_but_no_start_buttons(browser, live_server, transactional_db):
    from django.contrib.auth.models import User

    User.objects.create_user("viewer", password=PASSWORD)
    page = login(browser, live_server.url, "viewer")
    assert page.locator("h2", has_text="WAL capture").is_visible()
    assert page.locator("#start-backup").count() == 0
    response = page.goto(live_server.url + "/restores/new/")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    icon = page.locator("link[rel=icon]").get_attribute("href")
    assert page.request.get(live_server.url + icon).headers["content-type"] == "image/svg+xml"
    assert "needs a staff account" in page.content()
    # A refused action (a hand-made POST, as a stale page or a script would send) gets a page saying why.
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    page.evaluate("""([url, token]) => {
        const form = document.createElement("form");
        form.method = "post"; form.action = url;
        const field = document.createElement("input");
        field.name = "csrfmiddlewaretoken"; field.value = token; form.append(field);
        document.body.append(form); form.submit();
    }""", [live_server.url + "/backups/start/", token])
    page.wait_for_url(live_server.url + "/backups/start/")
    assert page.locator("#refused").inner_text() == "starting jobs needs a staff account"
    assert "can look at every page" in page.content()
    shot(page, "refused")


def test_backup_restore_and_chaos_from_the_browser(browser, live_server, celery_worker, primary, settings):
    from playwright.sync_api import expect

    from django.contrib.auth.models import User
    from chaos.models import ChaosRun
    from restores.models import RestoreJob
    from tests.restore_helpers import wait_captured, write_rows
    from walcatalog.catalog import recoverable_window
    from walcatalog.models import BaseBackup

    User.objects.create_superuser("ops", "ops@example.invalid", PASSWORD)
    base = live_server.url
    page = login(browser, base, "ops")

    # Overview: the real capturer streams from the real primary.
    expect(page.locator("#capture-state")).to_contain_text("streaming")
    expect(page.locator("#gaps")).to_have_text("none")
    expect(page.locator("#capture-lag")).to_have_text(re.compile(r"^\d[\d.]*\s\S+ · [\d.]+ (ms|s|min) behind$"))
    expect(page.locator("#storage-bytes")).to_contain_text("Local archive")

    # Start a backup from the overview and watch its bar reach done without reloading.
    page.select_option("select[name=compression]", "gzip")
    page.click("#start-backup")
    page.wait_for_url(re.compile(r"/backups/\d+/$"))
    backup = BaseBackup.objects.get(trigger="dashboard")
    # Every value the overall bar takes while the page follows the job: it must never go down.
    page.evaluate("""() => { const bar = document.getElementById("job-bar"); window.barValues = [];
        new MutationObserver(() => window.barValues.push(parseFloat(bar.getAttribute("aria-valuenow") || "0")))
            .observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]}); }""")
    bar = page.locator("#job-bar")
    expect(bar).to_have_attribute("data-state", "done", timeout=180_000)
    assert page.locator("#job-bar > span").evaluate("el => el.style.width") == "100%"
    values = page.evaluate("window.barValues")
    assert values == sorted(values) and values[-1:] in ([], [100]), values  # none if it ended before the page
    expect(page.locator("#job-steps")).to_contain_text("verifying (manifest checksums, pg_waldump)")
    expect(page.locator("#restorable")).to_have_text("yes")  # the facts refresh when the job ends
    expect(page.locator("#step-bar")).to_have_count(1)
    expect(page.locator("#job-log")).to_contain_text("== copying files (pg_basebackup)")  # the job's own log
    download = page.request.get(base + page.locator("#job-log-download").get_attribute("href"))
    assert download.headers["content-disposition"] == f'attachment; filename="backup-{backup.pk}.log"'
    assert "== copying files (pg_basebackup)" in download.text()
    expect(page.locator("#job-who")).to_have_text("ops")
    expect(page.locator(".messages li.queued")).to_have_count(0)  # "backup … queued" goes once it runs
    backup.refresh_from_db()
    assert backup.restorable, backup.error
    shot(page, "backup")
    # The backups page: size, duration, compression, WAL range, retention status; pin and unpin.
    page.goto(base + "/backups/")
    row = page.locator(f"#backup-{backup.pk}")
    expect(row.locator("td.retention")).to_have_text("kept")
    expect(row).to_contain_text("gzip")
    expect(row).to_contain_text(re.compile(r"\d/[0-9A-F]+ … \d/[0-9A-F]+"))
    page.click(f"#pin-{backup.pk}")
    expect(row.locator("td.retention")).to_have_text("pinned")
    shot(page, "backups")
    page.click(f"#pin-{backup.pk}")
    expect(row.locator("td.retention")).to_have_text("kept")

    # Commits after the backup, captured and indexed, so there is a window to restore into.
    write_rows(primary, 10, "browser", switch_every=5)
    primary.execute("SELECT pg_create_restore_point('browser-point')")
    write_rows(primary, 10, "browser", switch_every=5)
    wait_captured()
    wait_for(lambda: (w := recoverable_window()) and w.based_on == "base backup" and w.end > backup.stop_time,
             60, "the indexer to catalog WAL after the backup")

    page.goto(base + "/")
    expect(page.locator("#window")).to_contain_text("from")
    expect(page.locator("#window")).to_contain_text(re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"))
    expect(page.locator("#restore-target")).to_be_visible()
    expect(page.locator("#standby-replication")).to_have_text("streaming")
    shot(page, "overview")
    page.goto(base + "/timeline/")
    expect(page.locator("svg.timeline rect.window")).to_have_count(1)
    shot(page, "timeline")
    # The wheel zooms in (the viewBox narrows), then a click inside the window opens the restore form there.
    plot = page.locator("svg.timeline").bounding_box()
    page.mouse.move(plot["x"] + plot["width"] / 2, plot["y"] + plot["height"] / 2)
    page.mouse.wheel(0, -300)
    assert page.locator("svg.timeline").evaluate("svg => svg.viewBox.baseVal.width") < 960
    page.reload()
    box = page.locator("svg.timeline rect.window").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    page.wait_for_url(re.compile(r"/restores/new/\?kind=time&value="))
    picked = page.locator("input[name=value]").input_value()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", picked), picked
    assert page.locator("input[name=kind][value=time]").is_checked()
    # The pickers: the named restore point (once indexed) and the backups with their windows.
    from walcatalog.models import RestorePoint

    wait_for(lambda: RestorePoint.objects.filter(name="browser-point").exists(), 60,
             "the indexer to find the restore point")
    page.reload()
    expect(page.locator("#restore-points")).to_contain_text("browser-point")
    expect(page.locator("#backup-windows")).to_contain_text(backup.label)
    shot(page, "restore-form")
    page.locator("#restore-points a.pick").first.click()
    expect(page.locator("input[name=value]")).to_have_value("browser-point")

    # An impossible target is refused with the planner's message, nothing queued.
    page.goto(base + "/restores/new/")
    example = re.search(r"time with zone \((.+? UTC)\)", page.locator("#restore-form").inner_text()).group(1)
    assert page.locator("#window-start").inner_text() <= example <= page.locator("#window-end").inner_text()
    page.check("input[name=kind][value=time]")
    page.fill("input[name=value]", "2001-01-01T00:00:00+00:00")
    page.click("#start-restore")
    expect(page.locator("#plan-error")).to_be_visible()
    # The format the pages show is accepted back; a moment after the window is refused in the web's words.
    page.fill("input[name=value]", "2099-01-01 00:00:00 UTC")
    page.click("#start-restore")
    refusal = page.locator("#plan-error").inner_text()
    assert "target 2099-01-01 00:00:00 UTC is after the newest captured commit" in refusal, refusal
    assert "choose the latest target" in refusal and "--" not in refusal
    assert not RestoreJob.objects.exists()

    # A restore to the latest captured WAL: watch replay, promotion and the final state live.
    page.check("input[name=kind][value=latest]")
    page.fill("input[name=value]", "")
    page.click("#start-restore")
    page.wait_for_url(re.compile(r"/restores/\d+/$"))
    expect(page.locator("#plan-backup")).to_have_text(backup.label, timeout=120_000)  # once planned
    expect(page.locator("#plan-wal")).to_contain_text(" files, ")
    expect(page.locator("#job-steps")).to_contain_text("promoting", timeout=240_000)
    expect(page.locator("#job-state")).to_have_text("done", timeout=120_000)
    expect(page.locator("#job-bar")).to_have_attribute("data-state", "done")
    expect(page.locator("#promoted")).not_to_have_text("—")
    job = RestoreJob.objects.get()
    assert job.promoted_at is not None and job.trigger == "dashboard", job.error
    shot(page, "restore")
    expect(page.locator("#target-state")).to_have_text("promoted")
    expect(page.locator("#job-log")).to_contain_text("server: ")  # the restored server's own lines
    expect(page.locator("#stop-reason")).not_to_have_text("—")
    expect(page.locator("#recovery-settings")).to_contain_text("recovery_target_action = 'promote'")
    expect(page.locator("#target-psql")).to_contain_text('psql "host=127.0.0.1 port=')

    # /metrics: every fact the issue lists, from the real fleet and the jobs just run.
    text = page.request.get(base + "/metrics").text()
    for name in ("pitr_capture_lag_bytes", "pitr_capture_lag_seconds", "pitr_standby_lag_bytes",
                 "pitr_standby_lag_seconds", "pitr_upload_backlog_segments", "pitr_last_backup_duration_seconds",
                 "pitr_last_backup_size_bytes", "pitr_last_verified_restore_age_seconds",
                 "pitr_oldest_recoverable_timestamp_seconds", "pitr_periodic_task_last_success_timestamp_seconds",
                 "pitr_storage_bytes", "pitr_backup_too_old"):
        assert re.search(rf'^{name}{{[^}}]*server="demo"[^}}]*}} [\d.e+-]+$', text, re.M), name
    assert "# HELP pitr_upload_errors " in text  # a sample once an upload pass ran
    # Scheduled backups and the backup age alert on the overview (the live server reads these settings).
    kept = settings.PITR_BACKUP_SCHEDULE, settings.PITR_BACKUP_MAX_AGE
    settings.PITR_BACKUP_SCHEDULE, settings.PITR_BACKUP_MAX_AGE = "30 4 * * *", 1.0
    page.goto(base + "/")
    expect(page.locator("#backup-schedule")).to_contain_text(re.compile(r"\(cron\) · next \S+ 04:30:00 UTC"))
    expect(page.locator("#live-headline")).to_contain_text("more than PITR_BACKUP_MAX_AGE")
    expect(page.locator("#backup-age")).to_have_class("bad")
    assert re.search(r'^pitr_backup_too_old\{server="demo"\} 1\.0$', page.request.get(base + "/metrics").text(), re.M)
    shot(page, "overview-alert")
    settings.PITR_BACKUP_SCHEDULE, settings.PITR_BACKUP_MAX_AGE = kept

    # Cancel a restore while it runs: the job reads cancelled, the restore target is left stopped.
    page.goto(base + "/restores/new/")
    page.check("input[name=kind][value=latest]")
    page.click("#start-restore")
    page.wait_for_url(re.compile(r"/restores/\d+/$"))
    cancelled = RestoreJob.objects.order_by("-pk").first()
    wait_for(lambda: RestoreJob.objects.get(pk=cancelled.pk).current_step not in ("", "planning"), 120,
             "the restore to get past planning")
    page.click("#cancel-job")
    expect(page.locator("#job-state")).to_have_text("cancelled", timeout=60_000)
    cancelled.refresh_from_db()
    assert cancelled.state == "cancelled" and cancelled.error.startswith("cancelled by ops"), cancelled.error
    wait_for(lambda: fleet_driver_state("restore_target") == "stopped", 60, "the restore target to stop")
    page.reload()
    expect(page.locator("#target-state")).to_have_text("stopped")
    shot(page, "restore-cancelled")

    # A short chaos run started from the dashboard, then opened.
    page.goto(base + "/chaos/")
    page.fill("input[name=writers]", "2")
    page.fill("input[name=duration]", "15")
    page.fill("input[name=interval]", "3-4")
    page.fill("input[name=restores]", "1")
    page.fill("input[name=actions]", "capturer_restart,primary_pause")
    page.click("#start-chaos")
    page.wait_for_url(re.compile(r"/chaos/\d+/$"))
    # Live while it runs, without reloading: seconds of chaos, actions and writes as they happen. What the
    # page shows is checked, not the run's row: a loaded machine may finish the run before the page is read.
    expect(page.locator("#job-progress")).to_contain_text(re.compile(r" s of 15 s"), timeout=240_000)
    expect(page.locator("#job-state")).to_have_text("running")
    expect(page.locator("#job-steps")).not_to_contain_text("restoring and verifying")
    expect(page.locator("#events")).to_contain_text(re.compile("capturer_restart|primary_pause"), timeout=60_000)
    expect(page.locator("#chaos-live")).not_to_contain_text("0 rows committed")
    shot(page, "chaos-live")
    expect(page.locator("#job-state")).to_have_text(re.compile("done|failed"), timeout=400_000)
    run = ChaosRun.objects.get()
    assert run.verdict == "passed", f"{run.summary} {run.error}"
    expect(page.locator("#verdict")).to_have_text("Passed")  # the header follows the run: no reload
    page.reload()
    expect(page.locator("#verdict")).to_have_text("Passed")
    expect(page.locator("#verifications")).to_contain_text("exact")
    expect(page.locator("svg.chaos polyline.writes")).to_have_count(1)
    expect(page.locator("svg.chaos text.tick").last).to_have_text("times in UTC")
    expect(page.locator("svg.chaos text.tick").nth(2)).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"))
    shot(page, "chaos")
