"""python manage.py restore (--target-time T | --target-lsn L | --target-xid X | --target-name N
| --immediate | --latest) [--as-new-primary NAME --port P --restore-port R]"""
from __future__ import annotations

from fleet.command import ServerCommand
from pitrsite.errors import PitrError
from pitrsite.jobs import ConsoleReporter, JobReporter
from restores import cli
from restores.engine import run_restore
from restores.service import queue_restore


class Command(ServerCommand):
    help = "Restore the restore target to a moment and promote it; the primary is only read."
    json_help = "print the finished job as JSON"
    # Django's system checks (models, admin, URLconf) are static and run by `manage.py check` and the tests;
    # here they would load every view and cost each restore or backup 0.2 s before its job starts.
    requires_system_checks: list[str] = []

    def arguments(self, parser):
        cli.arguments(parser)

    def run(self, *args, **opts):
        target, promote = cli.request_of(opts)
        job = queue_restore(target, trigger="command", as_new_primary=promote)
        reason = ""
        try:
            job = run_restore(job, ConsoleReporter(self.out.console, JobReporter(job)))
        except PitrError as exc:
            job.refresh_from_db()
            reason = str(exc)
        self.out.finish(*cli.outcome(job), reason)
