"""python manage.py retention [--dry-run] [--json] [--keep-backups N] [--days D]"""
from __future__ import annotations

import json

from django.core.management.base import CommandError

from pitrsite.errors import PitrError
from pitrsite.jobs import ConsoleReporter
from walcatalog.retention import Policy, apply_retention
from fleet.command import ServerCommand


class Command(ServerCommand):
    help = ("Apply the retention policy (PITR_RETENTION_KEEP_BACKUPS, PITR_RETENTION_DAYS): delete backups and WAL, "
            "locally and in storage, that no restore inside the kept window needs.")

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="show what would be deleted, delete nothing")
        parser.add_argument("--json", action="store_true")
        parser.add_argument("--keep-backups", type=int, default=None, help="override PITR_RETENTION_KEEP_BACKUPS")
        parser.add_argument("--days", type=float, default=None, help="override PITR_RETENTION_DAYS")

    def handle(self, *args, **opts):
        policy = Policy.from_settings()
        if opts["keep_backups"] is not None:
            if opts["keep_backups"] < 0:
                raise CommandError("--keep-backups must be 0 or more")
            policy.keep_backups = opts["keep_backups"]
        if opts["days"] is not None:
            if opts["days"] < 0:
                raise CommandError("--days must be 0 or more")
            policy.days = opts["days"]
        try:
            result = apply_retention(policy, dry_run=opts["dry_run"], reporter=ConsoleReporter(self.stderr._out))
        except PitrError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(json.dumps(result.as_dict(), indent=2) if opts["json"] else str(result))
