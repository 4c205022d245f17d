"""Dashboard latency with a big catalog: overview and WAL timeline p95.

Fills a throwaway catalog database (SQLite in a temporary data home, nothing
of yours is touched) with 100k WAL segments on 3 timelines, a few gaps, base
backups and 1k jobs, then requests the pages through Django's test client
(the whole view + template path, no network) and writes the figures to
bench/results/dashboard.json. "steady" is the catalog unchanged between
requests (the dashboard caches catalog answers per catalog state, see
dashboard/status.py); "cold" empties that cache before every request, which is
what the first page view after each index pass pays. No PostgreSQL server is needed: the fleet is
absent, so the capture part of the overview reports "stopped" quickly.

    .venv/bin/python bench/dashboard.py [--segments 100000] [--jobs 1000] [--requests 60]
        [--screenshot docs/screenshots/timeline-100k.png]

--screenshot also renders /timeline/ of that catalog in Debian's chromium
(/usr/bin/chromium, through Playwright) to see that it stays readable.

Goal: p95 < 150 ms for / and /timeline/ (steady state; cold figures reported beside it).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["/", "/timeline/", "/overview.json", "/metrics", "/backups/", "/restores/"]


def setup(home: Path) -> None:
    os.environ.update(PITR_HOME=str(home), DJANGO_SETTINGS_MODULE="pitrsite.settings", PITR_PRIMARY_PORT="47991",
                      PITR_STANDBY_PORT="47992", PITR_RESTORE_PORT="47993")
    os.environ.pop("DATABASE_URL", None)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def fill(segments: int, jobs: int) -> dict:
    from django.utils import timezone

    from pitrsite.jobs import JobState
    from restores.models import RestoreJob
    from tests.dashboard_data import make_backup, make_segments

    now = timezone.now()
    start = now - timedelta(days=30)
    step = timedelta(days=30) / segments
    third = segments // 3
    # three timelines one after the other, two gaps of a few segments
    made = make_segments(1, [n for n in range(1, third + 1) if not 5000 <= n < 5003], start, step)
    made += make_segments(2, range(third + 1, 2 * third + 1), start + step * third, step)
    rest = [n for n in range(2 * third + 1, segments + 1) if not 70000 <= n < 70010]
    made += make_segments(3, rest, start + step * 2 * third, step, partial_last=True)
    states = [JobState.DONE] * 8 + [JobState.FAILED, JobState.INTERRUPTED]
    backups = [make_backup(1 + (i * 3) // jobs, 1 + i * (segments // (jobs // 2)),
                           start + step * i * (segments // (jobs // 2)),
                           state=states[i % 10], label=f"pitr_bench_{i:04d}") for i in range(jobs // 2)]
    RestoreJob.objects.bulk_create([
        RestoreJob(target_kind="lsn", target_value="0/5000000", state=states[i % 10], backup=backups[i % len(backups)],
                   created_at=start + step * i * 100, started_at=start + step * i * 100,
                   finished_at=start + step * i * 100 + timedelta(seconds=40), steps=[])
        for i in range(jobs - len(backups))])
    RestoreJob.objects.create(target_kind="latest", state=JobState.RUNNING, current_step="replaying WAL",
                              started_at=now, progress_done=3, progress_total=10)
    return {"segments": made, "backups": len(backups), "restores": jobs - len(backups) + 1}


def _figures(times: list[float], size: int) -> dict:
    times = sorted(times)
    return {"p50_ms": round(statistics.median(times), 1), "p95_ms": round(times[max(0, int(len(times) * 0.95) - 1)], 1),
            "max_ms": round(times[-1], 1), "bytes": size, "requests": len(times)}


def measure(requests: int, cold_requests: int) -> dict:
    """Steady state (catalog unchanged between requests: its answers come from the per-state cache)
    and cold (cache emptied before each request: what the first request after an index pass pays)."""
    from django.contrib.auth.models import User
    from django.core.cache import cache
    from django.test import Client

    client = Client()
    client.force_login(User.objects.create_superuser("bench", "bench@example.invalid", "x"))
    results = {}
    for url in PAGES:
        for _ in range(3):  # warm up template loading and the segment size lookup
            assert client.get(url).status_code == 200, url
        figures = {}
        for mode, count in (("steady", requests), ("cold", cold_requests)):
            times = []
            for _ in range(count):
                if mode == "cold":
                    cache.clear()
                t0 = time.perf_counter()
                response = client.get(url)
                times.append((time.perf_counter() - t0) * 1000)
                assert response.status_code == 200, url
            figures[mode] = _figures(times, len(response.content))
            print(f"{url:16} {mode:6} p50 {figures[mode]['p50_ms']:7.1f} ms  p95 {figures[mode]['p95_ms']:7.1f} ms  "
                  f"max {figures[mode]['max_ms']:7.1f} ms  {figures[mode]['bytes']:,} bytes", flush=True)
        results[url] = figures
    return results


def screenshot(path: Path) -> None:
    """The timeline page of the big catalog, as a browser shows it (CSS inlined, no server needed)."""
    from django.test import Client
    from playwright.sync_api import sync_playwright

    client = Client()
    client.force_login(__import__("django.contrib.auth.models", fromlist=["User"]).User.objects.get(username="bench"))
    html = client.get("/timeline/").content.decode()
    css = (ROOT / "dashboard" / "static" / "dashboard" / "dashboard.css").read_text()
    html = re.sub(r'<link rel="stylesheet"[^>]*>', f"<style>{css}</style>", html)
    html = re.sub(r"<script[^>]*></script>", "", html)
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                                          "--disable-background-networking", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_content(html)
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=True)
        browser.close()
    print(f"timeline screenshot written to {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--cold-requests", type=int, default=10)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "dashboard.json")
    parser.add_argument("--screenshot", type=Path, help="also save the timeline page as a PNG")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="pitr-bench-dashboard-"))
    try:
        setup(home)
        t0 = time.perf_counter()
        made = fill(args.segments, args.jobs)
        print(f"filled {made} in {time.perf_counter() - t0:.1f} s", flush=True)
        pages = measure(args.requests, args.cold_requests)
        if args.screenshot:
            screenshot(args.screenshot)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    from django.db import connection

    goal = 150.0
    report = {"benchmark": "dashboard", "catalog": made, "database": connection.vendor, "pages": pages,
              "goal_p95_ms": goal, "met": all(pages[u]["steady"]["p95_ms"] < goal for u in ("/", "/timeline/")),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"goal p95 < {goal:.0f} ms for / and /timeline/: {'met' if report['met'] else 'NOT met'}; "
          f"written to {args.output}")
    return 0 if report["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
