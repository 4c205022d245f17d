"""Chaos runs: the proof harness's job rows. The table keeps its old name (the model moved from restores)."""
from __future__ import annotations

from django.db import models

from pitrsite.jobs import Job
from walcatalog.models import BaseBackup


class Verdict(models.TextChoices):
    PENDING = "", "pending"
    PASSED = "passed"
    FAILED = "failed"


class ChaosRun(Job):
    """Concurrent writers + injected failures, then restores to logged moments compared row for row.

    Written by chaos.run; files (writes-*.jsonl, verification_log.jsonl,
    report.json) live in ``run_dir``.
    """
    kind = "chaos"

    parameters = models.JSONField(default=dict, blank=True, help_text="as validated by chaos.params.ChaosParams")
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
        db_table = "restores_chaosrun"

    def __str__(self) -> str:
        return f"chaos run #{self.pk}" + (f" ({self.verdict})" if self.verdict else "")

    @property
    def results(self) -> list:
        """The per-T verifications (the name the dashboard's JSON uses)."""
        return self.verifications

    @property
    def passed_count(self) -> int:
        return sum(1 for v in self.verifications if v.get("ok"))
