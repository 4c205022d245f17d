"""python manage.py storage check [--json]: what is local only, remote only, and mismatched."""
from __future__ import annotations

import json

from django.core.management.base import CommandError

from pitrsite.errors import PitrError
from walcatalog.uploader import check_storage
from fleet.command import ServerCommand

LISTS = ("local_only", "remote_only", "untracked", "missing", "mismatched")


class Command(ServerCommand):
    help = "Inspect the archive storage against the catalog and the local files."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="check")
        check = sub.add_parser("check", help="list local-only, remote-only and mismatched files (reads every "
                                             "recorded object back and hashes it)")
        check.add_argument("--json", action="store_true")

    def handle(self, *args, **opts):
        try:
            result = check_storage()
        except PitrError as exc:
            raise CommandError(str(exc)) from None
        if opts["json"]:
            self.stdout.write(json.dumps(result.as_dict(), indent=2))
        else:
            for name in LISTS:
                for entry in getattr(result, name):
                    self.stdout.write(f"{name.replace('_', ' ')}: {entry}")
            self.stdout.write(str(result))
        if not result.ok:
            raise CommandError(f"storage check found {len(result.missing)} missing and {len(result.mismatched)} "
                               "mismatched object(s)")
