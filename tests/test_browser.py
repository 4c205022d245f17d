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


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_viewer_sees_overview_but_no_start_buttons(browser, live_server, transactional_db):
    from django.contrib.auth.models import User

    User.objects.create_user("viewer", password=PASSWORD)
    page = login(browser, live_server.url, "viewer")
    assert page.locator("h2", has_text="WAL capture").is_visible()
    assert page.locator("#start-backup").count() == 0
    page.goto(live_server.url + "/restores/new/")
    assert "needs a staff account" in page.content()


def test_backup_restore_and_chaos_from_the_browser(browser, live_server, celery_worker, primary):
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

    # Start a backup from the overview and watch its bar reach done without reloading.
    page.select_option("select[name=compression]", "gzip")
    page.click("#start-backup")
    page.wait_for_url(re.compile(r"/backups/\d+/$"))
    backup = BaseBackup.objects.get(trigger="dashboard")
    bar = page.locator("#job-bar")
    expect(bar).to_have_attribute("data-state", "done", timeout=180_000)
    assert page.locator("#job-bar > span").evaluate("el => el.style.width") == "100%"
    expect(page.locator("#job-steps")).to_contain_text("verifying (manifest checksums, pg_waldump)")
    expect(page.locator("#restorable")).to_have_text("yes")  # the facts refresh when the job ends
    backup.refresh_from_db()
    assert backup.restorable, backup.error
    shot(page, "backup")

    # Commits after the backup, captured and indexed, so there is a window to restore into.
    write_rows(primary, 20, "browser", switch_every=5)
    wait_captured()
    wait_for(lambda: (w := recoverable_window()) and w.based_on == "base backup" and w.end > backup.stop_time,
             60, "the indexer to catalog WAL after the backup")

    page.goto(base + "/")
    expect(page.locator("#window")).to_contain_text("from")
    shot(page, "overview")
    page.goto(base + "/timeline/")
    expect(page.locator("svg.timeline rect.window")).to_have_count(1)
    shot(page, "timeline")

    # An impossible target is refused with the planner's message, nothing queued.
    page.goto(base + "/restores/new/")
    page.check("input[name=kind][value=time]")
    page.fill("input[name=value]", "2001-01-01T00:00:00+00:00")
    page.click("#start-restore")
    expect(page.locator("#plan-error")).to_be_visible()
    assert not RestoreJob.objects.exists()

    # A restore to the latest captured WAL: watch replay, promotion and the final state live.
    page.check("input[name=kind][value=latest]")
    page.fill("input[name=value]", "")
    page.click("#start-restore")
    page.wait_for_url(re.compile(r"/restores/\d+/$"))
    expect(page.locator("#job-steps")).to_contain_text("promoting", timeout=240_000)
    expect(page.locator("#job-state")).to_have_text("done", timeout=120_000)
    expect(page.locator("#job-bar")).to_have_attribute("data-state", "done")
    expect(page.locator("#promoted")).not_to_have_text("—")
    job = RestoreJob.objects.get()
    assert job.promoted_at is not None and job.trigger == "dashboard", job.error
    shot(page, "restore")

    # A short chaos run started from the dashboard, then opened.
    page.goto(base + "/chaos/")
    page.fill("input[name=writers]", "2")
    page.fill("input[name=duration]", "10")
    page.fill("input[name=interval]", "3-4")
    page.fill("input[name=restores]", "1")
    page.fill("input[name=actions]", "capturer_restart,primary_pause")
    page.click("#start-chaos")
    page.wait_for_url(re.compile(r"/chaos/\d+/$"))
    expect(page.locator("#job-state")).to_have_text(re.compile("done|failed"), timeout=400_000)
    run = ChaosRun.objects.get()
    assert run.verdict == "passed", f"{run.summary} {run.error}"
    page.reload()
    expect(page.locator("#verdict")).to_have_text("Passed")
    expect(page.locator("#verifications")).to_contain_text("exact")
    expect(page.locator("svg.chaos polyline.writes")).to_have_count(1)
    shot(page, "chaos")
