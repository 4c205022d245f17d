"""python manage.py backup [--compress zstd] [--json]"""
from __future__ import annotations

from fleet.command import ServerCommand
from pitrsite.errors import PitrError
from pitrsite.jobs import ConsoleReporter, JobReporter
from walcatalog import cli
from walcatalog.backups import queue_backup, run_backup


class Command(ServerCommand):
    help = "Take a verified base backup of the primary (pg_basebackup, tar format)."
    json_help = "print the finished backup as JSON"
    # Django's system checks (models, admin, URLconf) are static and run by `manage.py check` and the tests;
    # here they would load every view and cost each restore or backup 0.2 s before its job starts.
    requires_system_checks: list[str] = []

    def arguments(self, parser):
        cli.arguments(parser)

    def run(self, *args, **opts):
        backup = queue_backup(cli.request_of(opts), trigger="command")
        reason = ""
        try:
            run_backup(backup, ConsoleReporter(self.out.console, JobReporter(backup)))
        except PitrError as exc:
            backup.refresh_from_db()
            reason = str(exc)
        self.out.finish(*cli.outcome(backup), reason)
