"""Queue restores: every caller (command, task, admin, dashboard) goes through here."""
from __future__ import annotations

import shutil

import psycopg
from django.utils import timezone

from fleet import pg, servers
from fleet.driver import get_driver
from pitrsite import locks
from pitrsite.errors import PitrError
from restores.engine import ROLE, refresh_catalog
from restores.models import RestoreJob, TargetKind
from restores.planner import NotYetCaptured, PlanError, RestoreTarget, plan
from walcatalog import walnames


def queue_restore(target: RestoreTarget, trigger: str = "command", as_new_primary: dict | None = None) -> RestoreJob:
    """Validate the target against the catalog: an impossible one never becomes a job.

    `as_new_primary` (restore --as-new-primary) is checked here too, before anything is touched.

    A valid target costs no index pass here (it runs pg_waldump, and this runs inside a web request): the
    job indexes what was captured since and plans for real. A target just past the catalog is let through
    for that reason, unless it is in the future. Only a refusal is checked again after an index pass, as
    it may come from a catalog a few seconds old (a restore point or segment not indexed yet).
    """
    target.validate()
    servers.lock(locks.RESTORE).refuse_if_held()
    get_driver().check_port_ours(ROLE)  # found now, not after the target was stopped and emptied
    spec = {}
    if as_new_primary is not None:  # {"name", "port", "restore_port"}: restores/promote.py
        from restores.promote import new_primary_spec

        spec = new_primary_spec(as_new_primary["name"], as_new_primary.get("port"),
                                as_new_primary.get("restore_port"), get_driver())
    try:
        validate_against_catalog(target)
    except PlanError:
        refresh_catalog()
        validate_against_catalog(target)
    return RestoreJob.objects.create(target_kind=target.kind, target_value=target.value, exclusive=target.exclusive,
                                     target_timeline=target.timeline, requested_backup_id=target.backup_id,
                                     trigger=trigger, as_new_primary=spec)


def validate_against_catalog(target: RestoreTarget) -> None:
    try:
        plan(target)
    except NotYetCaptured:
        if not_written_yet(target):
            raise


def not_written_yet(target: RestoreTarget) -> bool:
    """A time in the future, or an LSN the primary has not reached: no index pass can make it restorable."""
    if target.kind == TargetKind.TIME:
        return target.time > timezone.now()
    if target.kind == TargetKind.LSN:
        try:
            with get_driver().connect("primary", dbname="postgres", timeout=3) as conn:
                current = walnames.parse_lsn(pg.fetch_row(conn.execute("SELECT pg_current_wal_lsn()::text"))[0])
        except (PitrError, psycopg.Error):
            return False  # the job finds out, before it touches anything
        return target.lsn >= current
    return False


def clean_killed_restore(job: RestoreJob) -> None:
    """After the reaper found a restore's process dead: the target it left replaying must not promote
    itself unverified, and the job's staging directories go."""
    driver = get_driver()
    if job.current_step not in ("", "planning"):  # before that, the target still holds the previous restore
        driver.stop(ROLE, mode="immediate")
    for suffix in ("", "-wal", "-backup"):
        shutil.rmtree(driver.layout.staging / f"restore-{job.pk}{suffix}", ignore_errors=True)
