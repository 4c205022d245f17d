"""python manage.py backup [--compress zstd] [--json]"""
from __future__ import annotations

from fleet.command import ServerCommand
from pitrsite.jobs import ConsoleReporter, JobReporter
from walcatalog.backups import queue_backup, run_backup
from walcatalog.models import DEFAULT_COMPRESSION, Compression
from walcatalog.serializers import backup_dict


class Command(ServerCommand):
    help = "Take a verified base backup of the primary (pg_basebackup, tar format)."
    json_help = "print the finished backup as JSON"
    # Django's system checks (models, admin, URLconf) are static and run by `manage.py check` and the tests;
    # here they would load every view and cost each restore or backup 0.2 s before its job starts.
    requires_system_checks: list[str] = []

    def arguments(self, parser):
        parser.add_argument("--compress", help=f"one of {', '.join(Compression.values)} (default: the server's own "
                                               f"compression, else {DEFAULT_COMPRESSION})")

    def run(self, *args, **opts):
        backup = queue_backup(opts["compress"], trigger="command")
        run_backup(backup, ConsoleReporter(self.out.console, JobReporter(backup)))
        self.out.result(backup_dict(backup), f"backup {backup.label} done: {backup.start_lsn_text}.."
                        f"{backup.stop_lsn_text} on timeline {backup.timeline}, {backup.size_stored:,} bytes stored, "
                        "manifest verified")
