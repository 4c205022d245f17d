"""python manage.py upload [--json] [--parallel N]: one upload pass to the archive storage."""
from __future__ import annotations

from pitrsite.jobs import ConsoleReporter
from pitrsite.output import PitrCommand
from walcatalog.uploader import upload_pass


class Command(PitrCommand):
    help = ("Upload every complete indexed WAL segment, .history file and verified backup that has no verified "
            "copy in the archive storage yet (one pass; beat runs the same every PITR_UPLOAD_INTERVAL s).")
    json_help = "print the pass's result as JSON"

    def arguments(self, parser):
        parser.add_argument("--parallel", type=int, default=None,
                            help="transfers at once (default PITR_UPLOAD_PARALLEL)")

    def run(self, *args, **opts):
        if opts["parallel"] is not None and not 1 <= opts["parallel"] <= 64:
            self.out.fail(f"--parallel {opts['parallel']} is outside 1..64")
        result = upload_pass(ConsoleReporter(self.out.console), workers=opts["parallel"])
        for error in result.errors:
            self.out.warn(f"failed: {error}")
        self.out.result(result.as_dict(), str(result))
        if result.errors:
            self.out.fail(f"{len(result.errors)} upload(s) failed, first: {result.errors[0]}")
