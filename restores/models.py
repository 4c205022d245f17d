"""What we do with the catalog: restore jobs and chaos runs."""
from __future__ import annotations

from django.db import models

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
    target_kind = models.CharField(max_length=10, choices=TargetKind.choices)
    target_value = models.CharField(max_length=200, blank=True, help_text="as given: time, LSN, xid or name")
    exclusive = models.BooleanField(default=False)
    target_timeline = models.CharField(max_length=16, blank=True, help_text="recovery_target_timeline; blank for latest")
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
    # Set only on restore drills (trigger "drill", restores/drill.py).
    drill_verdict = models.CharField(max_length=8, choices=DrillVerdict.choices, default=DrillVerdict.PENDING,
                                     blank=True, db_index=True)
    drill_detail = models.JSONField(default=dict, blank=True,
                                    help_text="drill checks: end of WAL reached, pg_amcheck summary, durations, reason")

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

        clean_killed_restore(self)

    @property
    def final_lsn_text(self) -> str:
        return walnames.format_lsn(self.final_lsn) if self.final_lsn is not None else ""


class Verdict(models.TextChoices):
    PENDING = "", "pending"
    PASSED = "passed"
    FAILED = "failed"


class ChaosRun(Job):
    """Concurrent writers + injected failures, then restores to logged moments compared row for row.

    Written by restores.chaos; files (writes-*.jsonl, verification_log.json,
    report.json) live in ``run_dir``.
    """

    parameters = models.JSONField(default=dict, blank=True, help_text="as validated by restores.chaos.ChaosParams")
    verdict = models.CharField(max_length=8, choices=Verdict.choices, default=Verdict.PENDING, blank=True,
                               db_index=True)
    summary = models.TextField(blank=True, help_text="one readable line: passes, failures, writes")
    events = models.JSONField(default=list, blank=True,
                              help_text="chaos actions: [{action, target, started_at, ended_at, recovered_at, ...}]")
    verifications = models.JSONField(default=list, blank=True,
                                     help_text="one entry per restored moment T: checks, missing/extra ids, verdict")
    writes_count = models.IntegerField(default=0, help_text="rows committed by the writers (after resolution)")
    unknown_count = models.IntegerField(default=0, help_text="writes whose outcome was unknown, resolved afterwards")
    writes_series = models.JSONField(default=list, blank=True,
                                     help_text="[[unix second, commits in that second], ...] for the plot")
    writer_ids = models.JSONField(default=list, blank=True, help_text="test_data.writer values of this run")
    backup = models.ForeignKey(BaseBackup, null=True, blank=True, on_delete=models.SET_NULL, related_name="chaos_runs")
    run_dir = models.CharField(max_length=500, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "chaos run"

    def __str__(self) -> str:
        return f"chaos run #{self.pk}" + (f" ({self.verdict})" if self.verdict else "")

    @property
    def results(self) -> list:
        """The per-T verifications (the name the dashboard's JSON uses)."""
        return self.verifications

    @property
    def passed_count(self) -> int:
        return sum(1 for v in self.verifications if v.get("ok"))
