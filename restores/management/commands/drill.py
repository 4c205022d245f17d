"""python manage.py drill [--json]: one restore drill now (restore the newest moment, check the copy)."""
from __future__ import annotations

from pitrsite.jobs import ConsoleReporter, JobReporter
from pitrsite.output import PitrCommand
from restores.drill import new_drill, run_drill
from restores.models import DrillVerdict
from restores.serializers import restore_dict

EXIT_SKIPPED = 2  # proved nothing either way: another restore was running


class Command(PitrCommand):
    help = ("Restore the newest moment into the restore target, check it reached the end of the WAL and run "
            "pg_amcheck on it; exit 1 when the drill failed, 2 when it was skipped.")
    json_help = "print the finished drill job as JSON"

    def run(self, *args, **opts):
        job = new_drill("command")
        job = run_drill(job, ConsoleReporter(self.out.console, JobReporter(job)))
        detail = job.drill_detail
        amcheck = detail.get("amcheck", {})
        self.out.result(restore_dict(job), [] if job.drill_verdict != DrillVerdict.PASSED else (
            f"drill #{job.pk} passed: recovery reached {detail.get('final_lsn')} (end of the staged WAL "
            f"{detail.get('expected_end_lsn')}), pg_amcheck clean in {amcheck.get('seconds')} s; "
            f"{detail.get('total_seconds')} s in all"))
        if job.drill_verdict == DrillVerdict.FAILED:
            self.out.fail(f"drill #{job.pk} failed: {detail.get('reason')}")
        if job.drill_verdict == DrillVerdict.SKIPPED:
            self.out.fail(f"drill #{job.pk} {detail.get('reason')}", returncode=EXIT_SKIPPED)
