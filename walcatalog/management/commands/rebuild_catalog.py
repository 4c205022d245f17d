"""python manage.py rebuild_catalog --from-storage [--json]: refill an empty catalog from the archive storage."""
from __future__ import annotations

import json

from django.core.management.base import CommandError

from pitrsite.errors import PitrError
from pitrsite.jobs import ConsoleReporter
from walcatalog.rebuild import rebuild_from_storage
from fleet.command import ServerCommand


class Command(ServerCommand):
    help = ("Rebuild an empty catalog (segments, timelines, backups, storage copies) from what the archive "
            "storage holds; the indexer then finds the local files again.")

    def add_arguments(self, parser):
        parser.add_argument("--from-storage", action="store_true", required=True,
                            help="rebuild from the archive storage (the only source so far)")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **opts):
        try:
            result = rebuild_from_storage(ConsoleReporter(self.stderr._out))
        except PitrError as exc:
            raise CommandError(str(exc)) from None
        if opts["json"]:
            self.stdout.write(json.dumps(result.as_dict(), indent=2))
        else:
            for entry in result.skipped:
                self.stderr.write(f"skipped: {entry}")
            self.stdout.write(str(result))
