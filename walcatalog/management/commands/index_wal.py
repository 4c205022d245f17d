"""python manage.py index_wal [--archive DIR]: one incremental pass of the WAL indexer."""
from __future__ import annotations

from pathlib import Path

from django.core.management.base import CommandError

from pitrsite.errors import PitrError
from pitrsite.jobs import ConsoleReporter
from walcatalog.indexer import index_archive
from fleet.command import ServerCommand


class Command(ServerCommand):
    help = "Index new and changed files of the WAL archive into the catalog (one pass)."

    def add_arguments(self, parser):
        parser.add_argument("--archive", type=Path, default=None,
                            help="archive directory (default: PITR_WAL_ARCHIVE)")

    def handle(self, *args, archive: Path | None, **opts) -> None:
        try:
            result = index_archive(archive, reporter=ConsoleReporter())
        except PitrError as exc:
            raise CommandError(str(exc)) from None
        for error in result.errors:
            self.stderr.write(error)
        self.stdout.write(f"indexed: {result}")
