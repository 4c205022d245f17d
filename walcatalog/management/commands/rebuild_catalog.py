"""python manage.py rebuild_catalog --from-storage [--server NAME] [--json]: refill an empty catalog from the archive
storage; a server this home has no entry for gets one from storage."""
from __future__ import annotations

from fleet.command import ServerCommand
from fleet.models import Server
from pitrsite.errors import PitrError
from pitrsite.jobs import ConsoleReporter
from pitrsite.output import Output
from walcatalog.rebuild import rebuild_from_storage, server_from_storage


class Command(ServerCommand):
    help = ("Rebuild an empty catalog (segments, timelines, backups, storage copies) from what the archive "
            "storage holds; the indexer then finds the local files again.")

    def arguments(self, parser):
        parser.add_argument("--from-storage", action="store_true", required=True,
                            help="rebuild from the archive storage (the only source so far)")

        parser.add_argument("--cluster", metavar="VERSION-SYSTEMID",
                            help="which cluster of the server, when its storage prefix holds several")
        parser.add_argument("--restore-port", type=int,
                            help="a server new to this home: its restore target's port (default PITR_RESTORE_PORT)")
        parser.add_argument("--storage-prefix", default="",
                            help="a server new to this home: its prefix in storage (default servers/NAME)")
        parser.add_argument("--user", default="",
                            help="a server new to this home: the original's superuser (default PITR_PG_SUPERUSER)")

    def handle(self, *args, **opts):
        """--server NAME unknown here (a new machine): its entry is made from storage first, and taken back
        when the rebuild fails, so a second try starts from the same place."""
        name = opts.get("server")
        made = None
        if name and not Server.objects.filter(name=name).exists():
            try:
                made = server_from_storage(name, opts["restore_port"], opts["storage_prefix"], opts["user"])
            except PitrError as exc:
                Output(self, bool(opts.get("json"))).fail(str(exc))
        try:
            super().handle(*args, **opts)
        except BaseException:
            if made is not None:
                made.delete()
            raise

    def run(self, *args, **opts):
        result = rebuild_from_storage(ConsoleReporter(self.out.console), cluster=opts["cluster"])
        for entry in result.skipped:
            self.out.warn(f"skipped: {entry}")
        self.out.result(result.as_dict(), str(result))
