"""Django's system checks (models, admin, URLs, deployment-independent settings) pass.

`restore` and `backup` skip them to start faster; this is where they still run."""
from __future__ import annotations

from io import StringIO

from django.core.management import call_command


def test_system_checks_pass():
    out = StringIO()
    call_command("check", "--fail-level", "WARNING", stdout=out, stderr=out)
    assert "no issues" in out.getvalue(), out.getvalue()
