"""The base of every command that works on one server: --server NAME, optional while there is only one."""
from __future__ import annotations

import argparse

from fleet import servers
from pitrsite.errors import PitrError
from pitrsite.output import Output, PitrCommand


class ServerCommand(PitrCommand):
    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.add_argument("--server", metavar="NAME",
                            help="the server to work on (`server list`); optional while only one exists")
        # After a subcommand too (`storage check --server NAME`); SUPPRESS: an absent one keeps the value before.
        for action in parser._subparsers._group_actions if parser._subparsers else []:
            for sub in getattr(action, "choices", {}).values():
                sub.add_argument("--server", metavar="NAME", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        return parser

    def handle(self, *args, **opts) -> None:
        name = opts.pop("server", None)
        try:
            server = servers.resolve(name)
        except PitrError as exc:
            Output(self, bool(opts.get("json"))).fail(str(exc))
        with servers.using(server):
            super().handle(*args, **opts)
