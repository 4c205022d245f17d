"""The base of every command that works on one server: --server NAME, optional while there is only one."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from fleet import servers
from pitrsite.errors import PitrError


class ServerCommand(BaseCommand):
    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.add_argument("--server", metavar="NAME",
                            help="the server to work on (`server list`); optional while only one exists")
        return parser

    def execute(self, *args, **options):
        try:
            server = servers.resolve(options.pop("server", None))
        except PitrError as exc:
            raise CommandError(str(exc)) from None
        with servers.using(server):
            return super().execute(*args, **options)
