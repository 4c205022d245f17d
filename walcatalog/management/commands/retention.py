"""python manage.py retention [--dry-run] [--json] [--keep-backups N] [--days D]"""
from __future__ import annotations

from fleet.command import ServerCommand
from pitrsite.jobs import ConsoleReporter
from walcatalog.retention import Policy, apply_retention


class Command(ServerCommand):
    help = ("Apply the retention policy (PITR_RETENTION_KEEP_BACKUPS, PITR_RETENTION_DAYS): delete backups and WAL, "
            "locally and in storage, that no restore inside the kept window needs.")

    def arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="show what would be deleted, delete nothing")
        parser.add_argument("--keep-backups", type=int, default=None, help="override PITR_RETENTION_KEEP_BACKUPS")
        parser.add_argument("--days", type=float, default=None, help="override PITR_RETENTION_DAYS")

    def run(self, *args, **opts):
        policy = Policy.of_server()
        if opts["keep_backups"] is not None:
            if opts["keep_backups"] < 0:
                self.out.fail("--keep-backups must be 0 or more")
            policy.keep_backups = opts["keep_backups"]
        if opts["days"] is not None:
            if opts["days"] < 0:
                self.out.fail("--days must be 0 or more")
            policy.days = opts["days"]
        result = apply_retention(policy, dry_run=opts["dry_run"], reporter=ConsoleReporter(self.out.console))
        self.out.result(result.as_dict(), str(result))
