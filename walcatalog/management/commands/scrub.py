"""python manage.py scrub: one scrub pass over the WAL archive (beat runs it every PITR_SCRUB_INTERVAL s)."""
from __future__ import annotations

from django.core.management.base import CommandError

from walcatalog.scrub import scrub_archive
from fleet.command import ServerCommand


class Command(ServerCommand):
    help = "Re-hash complete WAL segments against the catalog; marks changed ones corrupt."

    def add_arguments(self, parser):
        parser.add_argument("--mb-per-s", type=float, default=None,
                            help="read rate limit (default PITR_SCRUB_MB_PER_S)")

    def handle(self, *args, **opts) -> None:
        result = scrub_archive(mb_per_s=opts["mb_per_s"])
        self.stdout.write(f"{result.checked} segments checked ({result.bytes} bytes), {result.corrupt} corrupt")
        if result.corrupt:
            raise CommandError(f"{result.corrupt} corrupt segment(s): see walstatus")
