"""python manage.py storage check [--json]: what is local only, remote only, and mismatched."""
from __future__ import annotations

from pitrsite.output import PitrCommand
from walcatalog.uploader import check_storage

LISTS = ("local_only", "remote_only", "untracked", "missing", "mismatched")


class Command(PitrCommand):
    help = "Inspect the archive storage against the catalog and the local files."
    json_help = None  # on the subcommand: `storage check --json`

    def arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="check")
        check = sub.add_parser("check", help="list local-only, remote-only and mismatched files (reads every "
                                             "recorded object back and hashes it)")
        check.add_argument("--json", action="store_true", help="machine-readable output")

    def run(self, *args, **opts):
        result = check_storage()
        self.out.result(result.as_dict(), [f"{name.replace('_', ' ')}: {entry}"
                                           for name in LISTS for entry in getattr(result, name)] + [str(result)])
        if not result.ok:
            self.out.fail(f"storage check found {len(result.missing)} missing and {len(result.mismatched)} "
                          "mismatched object(s)")
