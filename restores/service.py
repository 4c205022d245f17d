"""Queue restores: every caller (command, task, admin, dashboard) goes through here."""
from __future__ import annotations

from restores.engine import refresh_catalog
from restores.models import RestoreJob
from restores.planner import RestoreTarget, plan


def queue_restore(target: RestoreTarget, trigger: str = "command") -> RestoreJob:
    """Validate the target against the catalog first: an impossible one never becomes a job."""
    target.validate()
    refresh_catalog()
    plan(target)
    return RestoreJob.objects.create(target_kind=target.kind, target_value=target.value, exclusive=target.exclusive,
                                     target_timeline=target.timeline, requested_backup_id=target.backup_id,
                                     trigger=trigger)
