"""python manage.py index_wal [--archive DIR] [--json]: one incremental pass of the WAL indexer."""
from __future__ import annotations

from pathlib import Path

from fleet.command import ServerCommand
from pitrsite.jobs import ConsoleReporter
from walcatalog.indexer import index_archive


class Command(ServerCommand):
    help = "Index new and changed files of the WAL archive into the catalog (one pass)."

    def arguments(self, parser):
        parser.add_argument("--archive", type=Path, default=None,
                            help="archive directory (default: PITR_WAL_ARCHIVE)")

    def run(self, *args, archive: Path | None, **opts) -> None:
        result = index_archive(archive, reporter=ConsoleReporter(self.out.console))
        for error in result.errors:
            self.out.warn(error)
        self.out.result(result.as_dict(), f"indexed: {result}")
        if result.other_cluster:  # never a quiet warning: that WAL would mix two clusters
            self.out.fail(f"{len(result.other_cluster)} file(s) refused: {result.other_cluster[0]}")
