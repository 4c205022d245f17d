"""python manage.py drill [--json]: one restore drill now (restore the newest moment, check the copy)."""
from __future__ import annotations

import json

from django.core.management.base import CommandError

from pitrsite.jobs import ConsoleReporter, JobReporter
from restores.drill import new_drill, run_drill
from restores.models import DrillVerdict
from restores.serializers import restore_dict
from fleet.command import ServerCommand

EXIT_SKIPPED = 2  # proved nothing either way: another restore was running


class Command(ServerCommand):
    help = ("Restore the newest moment into the restore target, check it reached the end of the WAL and run "
            "pg_amcheck on it; exit 1 when the drill failed, 2 when it was skipped.")

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print the finished drill job as JSON")

    def handle(self, *args, **opts):
        job = new_drill("command")
        job = run_drill(job, ConsoleReporter(self.stderr._out, JobReporter(job)))
        detail = job.drill_detail
        if opts["json"]:
            self.stdout.write(json.dumps(restore_dict(job), indent=2))
        elif job.drill_verdict == DrillVerdict.PASSED:
            amcheck = detail.get("amcheck", {})
            self.stdout.write(f"drill #{job.pk} passed: recovery reached {detail.get('final_lsn')} (end of the "
                              f"staged WAL {detail.get('expected_end_lsn')}), pg_amcheck clean in "
                              f"{amcheck.get('seconds')} s; {detail.get('total_seconds')} s in all")
        if job.drill_verdict == DrillVerdict.FAILED:
            raise CommandError(f"drill #{job.pk} failed: {detail.get('reason')}")
        if job.drill_verdict == DrillVerdict.SKIPPED:
            raise CommandError(f"drill #{job.pk} {detail.get('reason')}", returncode=EXIT_SKIPPED)
