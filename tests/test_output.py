"""The one output writer: console lines, or exactly one JSON document on stdout, also on failure."""
from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import pytest
from django.core.management.base import CommandError

from pitrsite.errors import PitrError
from pitrsite.output import PitrCommand


class Sample(PitrCommand):
    def arguments(self, parser):
        parser.add_argument("--fail", choices=("before", "after"))

    def run(self, *args, **opts):
        if opts["fail"] == "before":
            raise PitrError("the bucket does not exist")
        self.out.result({"at": datetime(2026, 12, 2, 1, 2, 3, 456789, tzinfo=timezone.utc)}, ["line one", "line two"])
        if opts["fail"] == "after":
            self.out.fail("2 problem(s) found")


def call(*argv):
    out, err = io.StringIO(), io.StringIO()
    command = Sample(stdout=out, stderr=err)
    try:
        command.run_from_argv(["manage.py", "sample", *argv])
    except SystemExit as exc:
        return exc.code, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def test_console_lines_and_json():
    assert call()[1] == "line one\nline two\n"
    assert json.loads(call("--json")[1]) == {"at": "2026-12-02T01:02:03.456789+00:00"}


def test_a_failure_is_one_line_or_one_json_error():
    code, out, err = call("--fail", "before")
    assert code == 1 and out == "" and err.strip() == "CommandError: the bucket does not exist"
    code, out, err = call("--fail", "before", "--json")
    assert code == 1 and json.loads(out) == {"error": "the bucket does not exist"}


def test_a_failure_after_the_result_keeps_one_json_document():
    code, out, err = call("--fail", "after", "--json")
    assert code == 1 and json.loads(out)["at"].startswith("2026-12-02")  # parses: no second object after it
    assert "2 problem(s) found" in err


def test_a_failure_raises_command_error_when_called_in_process():
    with pytest.raises(CommandError, match="the bucket does not exist"):
        Sample(stdout=io.StringIO(), stderr=io.StringIO()).execute(fail="before", json=False, verbosity=1,
                                                                   no_color=False, force_color=False,
                                                                   skip_checks=True, traceback=False)
