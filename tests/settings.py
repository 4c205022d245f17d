"""Settings for the test suite: a private data home and free loopback ports.

Values go into os.environ so that subprocesses (a Celery worker, manage.py
commands) started by the tests see the same fleet and database.
"""
import os
import socket
import tempfile


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if "PITR_TEST_HOME" not in os.environ:
    home = tempfile.mkdtemp(prefix="pitr-test-")
    os.chmod(home, 0o755)  # the postgres OS user must reach its data directories
    os.environ["PITR_TEST_HOME"] = home
    for name in ("PITR_PRIMARY_PORT", "PITR_STANDBY_PORT", "PITR_RESTORE_PORT", "PITR_REDIS_PORT", "PITR_WEB_PORT",
                 "PITR_PGADMIN_PORT"):
        os.environ[name] = str(_free_port())
    os.environ.pop("CELERY_BROKER_URL", None)
os.environ["PITR_HOME"] = os.environ["PITR_TEST_HOME"]
os.environ.setdefault("PITR_INDEX_INTERVAL", "1")
os.environ.setdefault("PITR_WAL_SEGSIZE_MB", "1")  # small segments: many of them, quickly
os.environ.setdefault("PITR_PGADMIN", "false")  # the pgAdmin tests turn it on
os.environ.setdefault("PITR_DOCKER_PROJECT", f"pitrtest{os.environ['PITR_PRIMARY_PORT']}")  # never a user's containers
os.environ.setdefault("PITR_BACKUP_SCHEDULE", "disable")  # a backup at 02:00 would land in any running test
os.environ.setdefault("PITR_DRILL_INTERVAL", "0")  # drills replace the restore target: only test_drill runs them

from pitrsite.settings import *  # noqa: E402,F401,F403
from pitrsite.settings import DATABASES, PITR_HOME  # noqa: E402

# Subprocesses (a Celery worker) must use the database the test runner created.
_db = DATABASES["default"]
if _db["ENGINE"].endswith("sqlite3"):
    _db["TEST"] = {"NAME": str(PITR_HOME / "test-db.sqlite3")}
    if os.environ.get("PITR_TEST_SUBPROCESS"):
        _db["NAME"] = _db["TEST"]["NAME"]
elif os.environ.get("PITR_TEST_SUBPROCESS"):
    _db["NAME"] = "test_" + _db["NAME"]

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
# WhiteNoise warns for a missing STATIC_ROOT on every request; tests serve through finders anyway.
STATIC_ROOT = PITR_HOME / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
