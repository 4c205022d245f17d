"""What we do with the catalog: restore jobs (chaos runs live in the chaos app)."""
from __future__ import annotations

from typing import ClassVar

from django.db import models

from fleet.servers import ScopedManager, server_field, using
from pitrsite.jobs import Job
from walcatalog import walnames
from walcatalog.models import BaseBackup


class TargetKind(models.TextChoices):
    TIME = "time"
    LSN = "lsn"
    XID = "xid"
    NAME = "name"
    IMMEDIATE = "immediate"
    LATEST = "latest"


class DrillVerdict(models.TextChoices):
    PENDING = "", "pending"
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped", "skipped (another restore was running)"


DRILL_TRIGGER = "drill"


class RestoreJob(Job):
    kind = "restore"
    server = server_field("restores")
    target_kind = models.CharField(max_length=10, choices=TargetKind.choices)
    target_value = models.CharField(max_length=200, blank=True, help_text="as given: time, LSN, xid or name")
    exclusive = models.BooleanField(default=False)
    target_timeline = models.CharField(max_length=16, blank=True,
                                       help_text="recovery_target_timeline; blank for latest")
    backup = models.ForeignKey(BaseBackup, null=True, blank=True, on_delete=models.PROTECT, related_name="restores")
    requested_backup_id = models.IntegerField(null=True, blank=True)
    plan = models.JSONField(default=dict, blank=True, help_text="what the planner chose, for the record")
    wal_first = models.CharField(max_length=32, blank=True, help_text="first WAL file replayed")
    wal_last = models.CharField(max_length=40, blank=True, help_text="last WAL file replayed")
    wal_files = models.IntegerField(default=0)
    uses_partial = models.BooleanField(default=False)
    target_lsn = models.BigIntegerField(null=True, blank=True, help_text="where replay must reach, when known")
    replay_lsn = models.BigIntegerField(null=True, blank=True)
    promoted_at = models.DateTimeField(null=True, blank=True)
    final_lsn = models.BigIntegerField(null=True, blank=True)
    final_timeline = models.PositiveIntegerField(null=True, blank=True)
    source = models.CharField(max_length=16, default="local", help_text="where backup and WAL came from")
    # restore --as-new-primary: {"name", "port", "restore_port"} asked for; the job's last step makes the
    # verified copy that server (restores/promote.py), so the command and the dashboard's task share it.
    as_new_primary = models.JSONField(default=dict, blank=True,
                                      help_text="the server the restored copy becomes, when asked")
    # Set only on restore drills (trigger "drill", restores/drill.py).
    drill_verdict = models.CharField(max_length=8, choices=DrillVerdict.choices, default=DrillVerdict.PENDING,
                                     blank=True, db_index=True)
    drill_detail = models.JSONField(default=dict, blank=True,
                                    help_text="drill checks: end of WAL reached, pg_amcheck summary, durations, reason")

    objects: ClassVar[ScopedManager] = ScopedManager()  # type: ignore[assignment]
    all_servers = models.Manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "restore job"

    def __str__(self) -> str:
        return f"restore #{self.pk} to {self.target_description}"

    @property
    def target_description(self) -> str:
        if self.target_kind in (TargetKind.IMMEDIATE, TargetKind.LATEST):
            return self.target_kind
        return f"{self.target_kind} {self.target_value}" + (" (exclusive)" if self.exclusive else "")

    def on_reaped(self) -> None:
        from restores.service import clean_killed_restore  # the domain module imports this one

        with using(self.server):  # the reaper sees every server's jobs
            clean_killed_restore(self)

    @property
    def final_lsn_text(self) -> str:
        return walnames.format_lsn(self.final_lsn) if self.final_lsn is not None else ""
