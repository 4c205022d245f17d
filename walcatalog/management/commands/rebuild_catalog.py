"""python manage.py rebuild_catalog --from-storage [--json]: refill an empty catalog from the archive storage."""
from __future__ import annotations

from fleet.command import ServerCommand
from pitrsite.jobs import ConsoleReporter
from walcatalog.rebuild import rebuild_from_storage


class Command(ServerCommand):
    help = ("Rebuild an empty catalog (segments, timelines, backups, storage copies) from what the archive "
            "storage holds; the indexer then finds the local files again.")

    def arguments(self, parser):
        parser.add_argument("--from-storage", action="store_true", required=True,
                            help="rebuild from the archive storage (the only source so far)")

        parser.add_argument("--cluster", metavar="VERSION-SYSTEMID",
                            help="which cluster of the server, when its storage prefix holds several")

    def run(self, *args, **opts):
        result = rebuild_from_storage(ConsoleReporter(self.out.console), cluster=opts["cluster"])
        for entry in result.skipped:
            self.out.warn(f"skipped: {entry}")
        self.out.result(result.as_dict(), str(result))
