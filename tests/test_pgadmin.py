"""pgAdmin 4 as a supervised service of the local driver: its login is the generated secret, never a default."""
from __future__ import annotations

import json
import socket

import pytest

from fleet import pgadmin, services
from fleet.layout import Layout
from pitrsite import runner
from tests.pgadmin_login import logs_in

pytestmark = [pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_pgadmin_service_logs_in_with_the_generated_password_only(settings):
    settings.PITR_PGADMIN = True
    settings.PITR_PGADMIN_PORT = free_port()
    try:
        pgadmin.package_dir()
    except pgadmin.PgAdminError as exc:
        pytest.fail(f"{exc} (scripts/pitr test installs it)")
    layout = Layout.current()
    try:
        line = services.start("pgadmin", layout, services.argv("pgadmin", layout))
        assert "pgadmin started" in line and pgadmin.email() in line
        assert services.status("pgadmin", layout)["state"] == "running"
        assert pgadmin.answers()  # its login page, on loopback
        secret = pgadmin.password_file(layout)
        assert secret.stat().st_mode & 0o077 == 0
        base = pgadmin.url("")
        assert logs_in(base, pgadmin.email(), secret.read_text().strip())
        assert not logs_in(base, pgadmin.email(), "admin")  # no default password
        servers = json.loads((pgadmin.home(layout) / "servers.json").read_text())["Servers"]
        assert sorted(s["Name"] for s in servers.values()) == ["primary", "restore target", "standby (hot)"]
    finally:
        runner.stop_supervised("pgadmin", layout.run)
    assert services.status("pgadmin", layout)["state"] == "stopped"
