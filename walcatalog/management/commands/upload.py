"""python manage.py upload [--json] [--parallel N]: one upload pass to the archive storage."""
from __future__ import annotations

import json

from django.core.management.base import CommandError

from pitrsite.errors import PitrError
from pitrsite.jobs import ConsoleReporter
from walcatalog.uploader import upload_pass
from fleet.command import ServerCommand


class Command(ServerCommand):
    help = ("Upload every complete indexed WAL segment, .history file and verified backup that has no verified "
            "copy in the archive storage yet (one pass; beat runs the same every PITR_UPLOAD_INTERVAL s).")

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print the pass's result as JSON")
        parser.add_argument("--parallel", type=int, default=None,
                            help="transfers at once (default PITR_UPLOAD_PARALLEL)")

    def handle(self, *args, **opts):
        if opts["parallel"] is not None and not 1 <= opts["parallel"] <= 64:
            raise CommandError(f"--parallel {opts['parallel']} is outside 1..64")
        try:
            result = upload_pass(ConsoleReporter(self.stderr._out), workers=opts["parallel"])
        except PitrError as exc:
            raise CommandError(str(exc)) from None
        if opts["json"]:
            self.stdout.write(json.dumps(result.as_dict(), indent=2))
        else:
            for error in result.errors:
                self.stderr.write(f"failed: {error}")
            self.stdout.write(str(result))
        if result.errors:
            raise CommandError(f"{len(result.errors)} upload(s) failed, first: {result.errors[0]}")
