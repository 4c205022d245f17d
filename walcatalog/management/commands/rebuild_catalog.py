"""python manage.py rebuild_catalog --from-storage [--json]: refill an empty catalog from the archive storage."""
from __future__ import annotations

from pitrsite.jobs import ConsoleReporter
from pitrsite.output import PitrCommand
from walcatalog.rebuild import rebuild_from_storage


class Command(PitrCommand):
    help = ("Rebuild an empty catalog (segments, timelines, backups, storage copies) from what the archive "
            "storage holds; the indexer then finds the local files again.")

    def arguments(self, parser):
        parser.add_argument("--from-storage", action="store_true", required=True,
                            help="rebuild from the archive storage (the only source so far)")

    def run(self, *args, **opts):
        result = rebuild_from_storage(ConsoleReporter(self.out.console))
        for entry in result.skipped:
            self.out.warn(f"skipped: {entry}")
        self.out.result(result.as_dict(), str(result))
