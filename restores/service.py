"""Queue restores: every caller (command, task, admin, dashboard) goes through here."""
from __future__ import annotations

import shutil

from fleet.local import get_driver
from pitrsite.jobs import refuse_if_running
from restores.engine import ROLE, refresh_catalog
from restores.models import RestoreJob
from restores.planner import RestoreTarget, plan


def queue_restore(target: RestoreTarget, trigger: str = "command") -> RestoreJob:
    """Validate the target against the catalog first: an impossible one never becomes a job."""
    target.validate()
    refuse_if_running("restore", "restore")
    get_driver().check_port_ours(ROLE)  # found now, not after the target was stopped and emptied
    refresh_catalog()
    plan(target)
    return RestoreJob.objects.create(target_kind=target.kind, target_value=target.value, exclusive=target.exclusive,
                                     target_timeline=target.timeline, requested_backup_id=target.backup_id,
                                     trigger=trigger)


def clean_killed_restore(job: RestoreJob) -> None:
    """After the reaper found a restore's process dead: the target it left replaying must not promote
    itself unverified, and the job's staging directories go."""
    driver = get_driver()
    if job.current_step not in ("", "planning"):  # before that, the target still holds the previous restore
        driver.stop(ROLE, mode="immediate")
    for suffix in ("", "-wal", "-backup"):
        shutil.rmtree(driver.layout.staging / f"restore-{job.pk}{suffix}", ignore_errors=True)
