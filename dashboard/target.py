"""What the restore target holds now: its server's state, which restore produced it, how to connect.

After an interrupted restore the UI must not say only "interrupted" while the server replays on and
promotes itself: this reads the server itself (running? in recovery?) and names the job that wrote it.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings

from fleet import pg
from fleet.driver import get_driver
from pitrsite.errors import PitrError, first_line
from pitrsite.jobs import JobState
from restores.models import RestoreJob

ROLE = "restore_target"
# Steps before which a restore has not touched the target (it still holds the previous one's copy).
UNTOUCHED = ("", "planning")


def last_writer() -> RestoreJob | None:
    """The newest restore that got past planning: what the target's data directory came from."""
    return (RestoreJob.objects.exclude(state=JobState.QUEUED).exclude(current_step="planning", promoted_at=None)
            .exclude(started_at=None).select_related("backup").order_by("-started_at").first())


def facts() -> dict[str, Any]:
    """{state: stopped|recovering|promoted|paused|unknown, job, port, psql, note}."""
    driver = get_driver()
    port = driver.layout.port(ROLE)
    user, dbname = settings.PITR_PG_SUPERUSER, settings.PITR_DBNAME
    result: dict[str, Any] = {"port": port, "job": last_writer(), "note": "",
                              "psql": f'psql "host={settings.PITR_HOST} port={port} dbname={dbname} user={user}"',
                              "passfile": str(pg.passfile())}
    try:
        process = driver.state(ROLE)
    except (PitrError, OSError) as exc:
        return {**result, "state": "unknown", "note": first_line(exc)}
    if process != "running":
        result["state"] = process  # stopped or paused
    else:
        try:
            with pg.connect(port, dbname="postgres", timeout=2) as conn:
                in_recovery = pg.fetch_row(conn.execute("SELECT pg_is_in_recovery()"))[0]
            result["state"] = "recovering" if in_recovery else "promoted"
        except PitrError as exc:  # starting up, or refusing connections
            result.update(state="starting", note=first_line(exc))
    job = result["job"]
    if job is not None and job.state != JobState.DONE and result["state"] in ("recovering", "promoted"):
        result["note"] = (f"restore #{job.pk} ended {job.state}, but the server is still running and "
                          f"{'replaying WAL' if result['state'] == 'recovering' else 'has promoted itself'}: "
                          "its contents are not verified")
    return result
