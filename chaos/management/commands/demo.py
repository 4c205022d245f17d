"""python manage.py demo: the main job end to end, gently: write, back up, restore to logged moments, compare.

A short chaos run (3 writers for 20 s, one graceful capturer restart, 2 restores) through the same domain
function as `manage.py chaos`; prints the verdict, where to see it in the dashboard, and how to look at the
restored server with psql. Exits non-zero when a restored moment differs from the log.
"""
from __future__ import annotations

import dataclasses
import shutil

from django.conf import settings
from django.urls import NoReverseMatch, reverse

from chaos.models import ChaosRun, Verdict
from chaos.params import DEMO
from chaos.run import queue_chaos, run_chaos
from fleet import pg, services
from fleet.command import ServerCommand
from pitrsite.errors import PitrError
from pitrsite.jobs import ConsoleReporter, JobReporter


class Command(ServerCommand):
    help = "Show the main job end to end: concurrent writes, a backup, restores to logged moments compared row for row."

    json_help = None

    def arguments(self, parser):
        parser.add_argument("--duration", type=float, default=DEMO.duration,
                            help=f"seconds of writing (default {DEMO.duration:g})")
        parser.add_argument("--restores", type=int, default=DEMO.restores,
                            help=f"moments to restore and compare (default {DEMO.restores})")

    def run(self, *args, **opts):
        params = dataclasses.replace(DEMO, duration=opts["duration"], restores=opts["restores"])
        self.out.line(f"demo: {params.writers} writers insert rows into test_data for {params.duration:g} s while "
                          "the WAL capturer is restarted once; every commit is logged with its exact commit time. "
                          f"Then the restore target is restored to {params.restores} logged moments and compared "
                          "row for row.")
        try:
            run = queue_chaos(params, trigger="command")
            run = run_chaos(run, ConsoleReporter(self.out.console, JobReporter(run)))
        except PitrError as exc:
            self.out.fail(f"demo: {exc}")
        self.explain(run)
        if run.verdict != Verdict.PASSED:
            self.out.fail(f"demo failed: {run.error or run.summary}")

    def explain(self, run: ChaosRun) -> None:
        out = self.out.line
        out("")
        out(f"verdict: {run.summary}")
        for check in run.verifications:
            if check.get("error"):
                out(f"  T={check['moment']}: restore failed: {check['error']}")
                continue
            mark = "exact" if check["ok"] else "DIFFERENT"
            out(f"  T={check['moment']} ({check['kind']}): {mark}: {check['restored_rows']} of this run's rows "
                f"restored, {check['expected_rows']} expected; missing {check['missing_count']}, extra "
                f"{check['extra_count']}; recovery ended at {check['end_lsn']['final']}; "
                f"count(created_at <= T) {check['count']['restored']} = {check['count']['expected']} expected")
        out(f"files: {run.run_dir}/verification_log.jsonl (every commit) and report.json")
        out(f"dashboard: {self.page(run)} (log in as admin; the password is in {services.admin_password_file()})")
        last = next((c for c in reversed(run.verifications) if not c.get("error")), None)
        if last:
            psql = shutil.which("psql") or str(pg.bindir() / "psql")
            out(f"the restore target holds the last restored moment, T={last['moment']}:")
            out(f"  PGPASSFILE={pg.passfile()} {psql} -h {settings.PITR_HOST} -p {settings.PITR_RESTORE_PORT} "
                f"-U {settings.PITR_PG_SUPERUSER} {settings.PITR_DBNAME} "
                f"-c \"select count(*) from test_data where created_at <= '{last['moment']}'\"")

    @staticmethod
    def page(run: ChaosRun) -> str:
        try:
            return services.web_url(reverse("dashboard:chaos", args=[run.pk]))
        except NoReverseMatch:
            return services.web_url(f"/admin/chaos/chaosrun/{run.pk}/change/")
