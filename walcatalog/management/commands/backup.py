"""python manage.py backup [--compress zstd] [--json]"""
from __future__ import annotations

import json

from django.core.management.base import CommandError

from pitrsite.errors import PitrError
from pitrsite.jobs import ConsoleReporter, JobReporter
from walcatalog.backups import DEFAULT_COMPRESSION, queue_backup, run_backup
from walcatalog.models import Compression
from walcatalog.serializers import backup_dict
from fleet.command import ServerCommand


class Command(ServerCommand):
    help = "Take a verified base backup of the primary (pg_basebackup, tar format)."

    def add_arguments(self, parser):
        parser.add_argument("--compress", default=DEFAULT_COMPRESSION, help=f"one of {', '.join(Compression.values)}")
        parser.add_argument("--json", action="store_true", help="print the finished backup as JSON")

    def handle(self, *args, **opts):
        try:
            backup = queue_backup(opts["compress"], trigger="command")
            run_backup(backup, ConsoleReporter(self.stderr._out, JobReporter(backup)))
        except PitrError as exc:
            raise CommandError(str(exc)) from None
        if opts["json"]:
            self.stdout.write(json.dumps(backup_dict(backup), indent=2))
        else:
            self.stdout.write(f"backup {backup.label} done: {backup.start_lsn_text}..{backup.stop_lsn_text} "
                              f"on timeline {backup.timeline}, {backup.size_stored:,} bytes stored, manifest verified")
