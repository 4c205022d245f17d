"""What commands print, in one place (as barman's output.py): console lines or one JSON document.

A command subclasses PitrCommand and writes through self.out. With --json, stdout holds exactly one JSON
document, the result or {"error": "..."}, and a failure still exits non-zero; without it, results are lines
on stdout, warnings go to stderr, and a failure is Django's one-line `CommandError: ...`.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import date, datetime
from typing import Any, Iterable

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pitrsite.errors import PitrError


def _default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()  # full microseconds: commit times are compared exactly
    return str(value)  # Path, Decimal, an LSN object: their text is what a reader compares


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=_default)


class Result:
    """Mixin for a pass's result dataclass: its dict is its fields plus what derived() adds."""

    def derived(self) -> dict:
        return {}

    def as_dict(self) -> dict:
        return {**asdict(self), **self.derived()}  # type: ignore[call-overload]  # mixed into dataclasses


class Output:
    def __init__(self, command: BaseCommand, as_json: bool):
        self.command, self.as_json, self.printed = command, as_json, False

    def result(self, data: Any, text: str | Iterable[str] | None = None) -> None:
        """The command's answer: `data` as JSON, or the text lines (without them: data's items, or data)."""
        if self.as_json:
            self.command.stdout.write(to_json(data))
            self.printed = True
            return
        if text is None:
            text = [str(item) for item in data] if isinstance(data, list) else str(data)
        for line in [text] if isinstance(text, str) else text:
            self.command.stdout.write(line)

    def finish(self, document: Any, lines: list[str], error: str | None, reason: str = "") -> None:
        """A job's end as its outcome() tells it (restores/cli.py, walcatalog/cli.py): the document and lines, or
        the error with the document's other keys. `reason`: what the job's code raised, when the row names none."""
        if error is None and reason:
            error, document = reason, {"error": reason}
        if error is not None:
            self.fail(error, **{key: value for key, value in document.items() if key != "error"})
        self.result(document, lines)

    def line(self, text: str) -> None:
        """Console-only detail (a table row, a hint); JSON output carries it in the result."""
        if not self.as_json:
            self.command.stdout.write(text)

    def warn(self, text: str) -> None:
        self.command.stderr.write(text)

    def fail(self, message: str, returncode: int = 1, **extra: Any) -> None:
        """Exit non-zero with one line; with --json, stdout still holds a JSON document (with `extra`)."""
        if self.as_json and not self.printed:
            self.command.stdout.write(to_json({"error": message, **extra}))
            self.printed = True
        raise CommandError(message, returncode=returncode)

    @property
    def console(self):
        """Where progress bars go (stderr, so --json output stays parseable)."""
        return self.command.stderr._out


def non_negative(kind: type) -> Any:
    """An argparse type: a number of `kind`, 0 or more; anything else is argparse's one-line error."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is below 0")
        return value
    return parse


class JsonErrorParser(CommandParser):
    """An argument error is one line on stderr, exit status 2 (argparse's twelve-line usage block goes: --help
    has it). With `--json` it is a JSON error object on stdout too: a caller reading stdout never gets nothing.
    Subcommand parsers take this class."""

    def error(self, message: str):  # type: ignore[override]
        if not self.called_from_command_line:
            super().error(message)  # CommandError, for call_command
        document, line = self.error_words(message)
        if "--json" in sys.argv[2:]:
            sys.stdout.write(to_json(document) + "\n")
        self.exit(2, line + "\n")

    def error_words(self, message: str) -> tuple[dict, str]:
        """An argument error's JSON document and its stderr line (the web API answers the same words)."""
        return {"error": f"{self.prog}: {message}"}, f"{self.prog}: error: {message} (--help lists the options)"


class PitrCommand(BaseCommand):
    """A management command whose domain errors become one line (or a JSON error object)."""

    json_help: str | None = "machine-readable output"  # None: the command has no --json

    def add_arguments(self, parser) -> None:
        parser.__class__ = JsonErrorParser  # Django builds a CommandParser itself; subparsers copy the class
        if self.json_help:
            parser.add_argument("--json", action="store_true", help=self.json_help)
        self.arguments(parser)

    def arguments(self, parser) -> None:
        pass

    def handle(self, *args, **opts) -> None:
        self.out = Output(self, bool(opts.get("json")))
        try:
            self.run(*args, **opts)
        except CommandError as exc:
            self.out.fail(str(exc), exc.returncode)
        except PitrError as exc:
            self.out.fail(str(exc))

    def run(self, *args, **opts) -> None:
        raise NotImplementedError
