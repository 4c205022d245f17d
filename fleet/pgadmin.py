"""pgAdmin 4 for looking at every server of the fleet, the restore target among them (PITR_PGADMIN).

The `pgadmin4` PyPI package runs as a Python web app from its own virtualenv (PITR_PGADMIN_VENV, built
once by scripts/pitr: it is big). Its state lives in PITR_HOME/pgadmin: a config file (server mode, a
login, loopback only, no upgrade check), its SQLite database and servers.json, generated from the fleet's
settings on every start so every server appears. The login is pitrsite's own: an e-mail address and a
generated password kept in PITR_HOME/secrets/pgadmin_password, never a default. The local driver runs
it as a supervised service, the docker driver in the pgadmin container over the same files.
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from django.conf import settings

from fleet.layout import SERVER_ROLES, Layout
from pitrsite.config import persistent_secret
from pitrsite import runner
from pitrsite.errors import PgAdminError

CONFIG = """\
# Written by pitrsite (fleet/pgadmin.py) on every start.
SERVER_MODE = True
DATA_DIR = {data!r}
LOG_FILE = {log!r}
DEFAULT_SERVER = {host!r}
DEFAULT_SERVER_PORT = {port}
MASTER_PASSWORD_REQUIRED = False
UPGRADE_CHECK_ENABLED = False
CHECK_EMAIL_DELIVERABILITY = False
# The login's domain is under .test (reserved: it never reaches anyone), which pgAdmin refuses at login otherwise.
ALLOW_SPECIAL_EMAIL_DOMAINS = ["test"]
GLOBALLY_DELIVERABLE = False
HELP_PATH = "../../docs/en_US/_build/html/"
"""


def email() -> str:
    return settings.PITR_PGADMIN_EMAIL


def home(layout: Layout) -> Path:
    return layout.pgadmin


def password_file(layout: Layout) -> Path:
    return layout.secrets / "pgadmin_password"


def package_dir() -> Path:
    venv = Path(settings.PITR_PGADMIN_VENV)
    found = sorted(venv.glob("lib/python3*/site-packages/pgadmin4/pgAdmin4.py"))
    if not found:
        raise PgAdminError(f"pgAdmin 4 is not installed in {venv}: scripts/pitr up installs it "
                           f"({venv}/bin/pip install pgadmin4), or set PITR_PGADMIN=false")
    return found[-1].parent


def python() -> str:
    return str(Path(settings.PITR_PGADMIN_VENV) / "bin" / "python")


def argv() -> list[str]:
    return [python(), str(package_dir() / "pgAdmin4.py")]


def environment(layout: Layout) -> dict[str, str]:
    return {"CONFIG_DISTRO_FILE_PATH": str(home(layout) / "config_distro.py"), "PYTHONUNBUFFERED": "1"}


def servers_json(layout: Layout) -> dict:
    names = {"primary": "primary", "standby": "standby (hot)", "restore_target": "restore target"}
    return {"Servers": {str(i): {"Name": names[role], "Group": "pitrsite", "Host": settings.PITR_HOST,
                                 "Port": layout.port(role), "MaintenanceDB": "postgres",
                                 "Username": settings.PITR_PG_SUPERUSER, "SSLMode": "disable"}
                        for i, role in enumerate(SERVER_ROLES, 1)}}


def prepare(layout: Layout) -> None:
    """Config, login and servers.json, before pgAdmin starts (either driver): one-time setup-db, then
    the fleet's servers loaded again (--replace), so a changed port shows."""
    directory = home(layout)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    (directory / "config_distro.py").write_text(CONFIG.format(
        data=str(directory), log=str(layout.logs / "pgadmin-app.log"), host=settings.PITR_HOST,
        port=settings.PITR_PGADMIN_PORT))
    (directory / "servers.json").write_text(json.dumps(servers_json(layout), indent=2))
    env = environment(layout)  # over our own environment (the runner merges)
    setup = str(package_dir() / "setup.py")
    if not (directory / "pgadmin4.db").exists():
        secret = persistent_secret(password_file(layout), 18)
        _run([python(), setup, "setup-db"], {**env, "PGADMIN_SETUP_EMAIL": email(),
                                              "PGADMIN_SETUP_PASSWORD": secret}, "pgAdmin setup-db")
    _run([python(), setup, "load-servers", str(directory / "servers.json"), "--user", email(), "--replace"],
         env, "pgAdmin load-servers")


def _run(argv_: list[str], env: dict, step: str) -> None:
    result = runner.run(argv_, step=step, env=env, timeout=300, cwd=package_dir())
    # load-servers prints its own failures and exits 0: its output is checked too
    if "Error" in result.stdout or "Traceback" in result.stderr:
        raise PgAdminError(f"{step} failed: {runner.error_line(result.stderr or result.stdout)}")


def url(path: str = "/login") -> str:
    return f"http://{settings.PITR_HOST}:{settings.PITR_PGADMIN_PORT}{path}"


def answers() -> bool:
    try:
        with urllib.request.urlopen(url(), timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def login(layout: Layout) -> dict:
    return {"url": url("/"), "email": email(), "password_file": str(password_file(layout))}
