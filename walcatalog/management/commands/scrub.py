"""python manage.py scrub [--json]: one scrub pass over the WAL archive and the local base backups."""
from __future__ import annotations

from pitrsite.output import PitrCommand
from walcatalog.scrub import scrub_archive


class Command(PitrCommand):
    help = "Re-hash complete WAL segments and backup files against the catalog; marks changed ones corrupt."

    def arguments(self, parser):
        parser.add_argument("--mb-per-s", type=float, default=None,
                            help="read rate limit (default PITR_SCRUB_MB_PER_S)")

    def run(self, *args, **opts) -> None:
        result = scrub_archive(mb_per_s=opts["mb_per_s"])
        self.out.result(result.as_dict(), str(result))
        if result.corrupt:
            self.out.fail(f"{result.corrupt} corrupt segment(s): see walstatus")
