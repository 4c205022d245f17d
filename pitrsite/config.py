"""Typed readers for environment settings, in the style of healthchecks' settings.

Every setting comes from the environment (a `.env` file is read first when
present). A bad value stops start-up with one line that names the variable,
what it holds and what is allowed.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured


def load_dotenv(path: Path) -> None:
    """Read a .env file into os.environ (django-environ) without overriding what is set.

    django-environ skips a line it cannot parse without a word: such a line is an error here, in one line.
    """
    if not path.is_file():
        return
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if line and not line.startswith("#") and "=" not in line:
            raise ImproperlyConfigured(f"{path}:{lineno}: expected KEY=VALUE, got {raw!r}")
    environ.Env.read_env(str(path), overwrite=False)


def envstr(name: str, default: str = "") -> str:
    """A string; NAME_FILE may point at a file holding a secret."""
    file_path = os.environ.get(f"{name}_FILE")
    if file_path:
        return Path(file_path).read_text().strip()
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean: use true or false")


def envint(name: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ImproperlyConfigured(f"{name}={number} is outside {lo}..{hi}")
    return number


def envfloat(name: str, default: float, lo: float = 0.0) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not a number") from None
    if number < lo:
        raise ImproperlyConfigured(f"{name}={number} must be at least {lo}")
    return number


def envport(name: str, default: int) -> int:
    # Ports below 1024 need privileges the servers never get; 5432 and 6379
    # are allowed but not defaulted to, as the machine may own them.
    return envint(name, default, 1024, 65535)


def envpow2(name: str, default: int, lo: int, hi: int) -> int:
    """A power of two in lo..hi (initdb --wal-segsize accepts nothing else)."""
    number = envint(name, default, lo, hi)
    if number & (number - 1):
        raise ImproperlyConfigured(f"{name}={number} is not a power of two: use one of 1, 2, 4, ..., {hi}")
    return number


def distinct_ports(ports: dict[str, int]) -> None:
    """Two of our servers on one port: the second would fail late, or talk to the first."""
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port in seen:
            raise ImproperlyConfigured(f"{seen[port]} and {name} are both {port}: give each its own port")
        seen[port] = name


def envcron(name: str, default: str) -> str:
    """A cron schedule "MIN HOUR DOM MON DOW" (Celery's crontab syntax), or "disable" to turn it off."""
    value = os.environ.get(name, default).strip()
    if value.lower() == "disable":
        return "disable"
    fields = value.split()
    if len(fields) != 5:
        raise ImproperlyConfigured(f"{name}={value!r} is not a cron schedule: give 5 fields "
                                   "(minute hour day-of-month month day-of-week, e.g. '0 2 * * *') or 'disable'")
    if name not in os.environ:
        # Our own default is a known-good schedule: importing Celery's parser costs every command 0.25 s.
        return " ".join(fields)
    from celery.schedules import crontab

    try:
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                day_of_week=day_of_week)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}={value!r} is not a cron schedule: {exc}") from None
    return " ".join(fields)


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


def application_name(argv: list[str]) -> str:
    """What this process is, for pg_stat_activity: `pitrsite restore`, `pitrsite celery worker`, ..."""
    path = Path(argv[0] if argv else "")
    program = path.parent.name if path.name == "__main__.py" else path.name  # python -m PACKAGE
    words = [a for a in argv[1:] if not a.startswith("-")]
    if program == "manage.py" and words:
        what = words[0]
    elif program == "celery":
        what = next((w for w in words if w in ("worker", "beat")), program)
    else:
        what = program.removesuffix(".py")
    return f"pitrsite {what}"[:63]  # NAMEDATALEN


def database_from_url(url: str, base_dir: Path) -> dict:
    """DATABASE_URL through django-environ (query options such as sslmode kept): SQLite or PostgreSQL."""
    config = environ.Env.db_url_config(url)
    engine = config.get("ENGINE", "")
    if engine == "django.db.backends.sqlite3":
        path = Path(config["NAME"])
        config["NAME"] = str(path if path.is_absolute() else base_dir / path)  # sqlite:///rel: under the project
        # A worker, beat and the web server write at once: readers never block the writer (WAL journal),
        # a writer waits for another (busy timeout) and takes its lock when its transaction begins
        # (IMMEDIATE), since a read lock upgraded mid-transaction fails at once with "database is locked".
        options = config.setdefault("OPTIONS", {})
        options.setdefault("timeout", 30)
        options.setdefault("init_command", "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
        options.setdefault("transaction_mode", "IMMEDIATE")
        return config
    if engine == "django.db.backends.postgresql":
        config["PORT"] = str(config.get("PORT") or "")
        config.setdefault("OPTIONS", {}).setdefault("application_name", application_name(sys.argv))
        return {**config, "CONN_MAX_AGE": 0}
    scheme = url.split(":", 1)[0]
    raise ImproperlyConfigured(
        f"DATABASE_URL scheme {scheme!r} is not supported: use sqlite:///path or postgres://user:pass@host:port/db"
    )


def default_pg_bindir() -> str:
    """`pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin, else ''."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        from pitrsite import runner  # not at the top: settings import this module
        try:
            out = runner.run([pg_config, "--bindir"], step="asking pg_config", timeout=10, check=False)
            candidate = out.stdout.strip()
            if out.returncode == 0 and Path(candidate, "initdb").exists():
                return candidate
        except runner.ToolFailed:
            pass
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return str(versions[-1].parent) if versions else ""


def persistent_secret(path: Path, nbytes: int = 32) -> str:
    """A random secret created once under the data home, readable by its owner only."""
    import secrets

    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


# --- the archive storage (STORAGES["archive"]): used by walcatalog.storage ----------------------------
STORAGE_BACKENDS = {
    "filesystem": "django.core.files.storage.FileSystemStorage",
    "s3": "storages.backends.s3.S3Storage",
    "azure": "walcatalog.azure_storage.ArchiveAzureStorage",
    "gcs": "storages.backends.gcloud.GoogleCloudStorage",
}
SPOOL_BYTES = 64 << 20  # remote backends spool an object read past this size to disk, not memory


def archive_storage_setting(home: Path) -> dict:
    """The STORAGES["archive"] entry from PITR_STORAGE_* variables; a missing required one is a one-line error."""
    backend = envchoice("PITR_STORAGE_BACKEND", "filesystem", tuple(STORAGE_BACKENDS))
    prefix = os.environ.get("PITR_STORAGE_PREFIX", "").strip("/")
    if backend == "filesystem":
        location = Path(os.environ.get("PITR_STORAGE_DIR") or home / "storage")
        # allow_overwrite: a half-written file from a killed upload is replaced, not renamed around.
        options = {"location": str(location / prefix if prefix else location), "allow_overwrite": True}
    elif backend == "s3":
        options = {
            "bucket_name": _required("PITR_STORAGE_S3_BUCKET", backend),
            "endpoint_url": os.environ.get("PITR_STORAGE_S3_ENDPOINT_URL") or None,
            "region_name": os.environ.get("PITR_STORAGE_S3_REGION") or None,
            "access_key": envstr("PITR_STORAGE_S3_ACCESS_KEY_ID") or None,
            "secret_key": envstr("PITR_STORAGE_S3_SECRET_ACCESS_KEY") or None,
            "location": prefix, "file_overwrite": True, "querystring_auth": False, "max_memory_size": SPOOL_BYTES,
            # One attempt per call: with_retries() decides how often to try, so attempts never multiply.
            "client_config": _s3_config(),
        }
    elif backend == "azure":
        options = {"azure_container": _required("PITR_STORAGE_AZURE_CONTAINER", backend), "location": prefix,
                   "overwrite_files": True, "max_memory_size": SPOOL_BYTES, **_azure_credentials(),
                   "client_options": {"retry_total": 0}}  # with_retries() is the one retry layer
    else:
        # The emulator (tests) is reached through STORAGE_EMULATOR_HOST, which google-cloud-storage honours;
        # real credentials come from GOOGLE_APPLICATION_CREDENTIALS as google-auth reads it.
        options = {"bucket_name": _required("PITR_STORAGE_GCS_BUCKET", backend),
                   "project_id": os.environ.get("PITR_STORAGE_GCS_PROJECT") or None,
                   "location": prefix, "file_overwrite": True, "querystring_auth": False,
                   "max_memory_size": SPOOL_BYTES}
    return {"BACKEND": STORAGE_BACKENDS[backend], "OPTIONS": options}


def _s3_config():
    from botocore.config import Config

    return Config(retries={"total_max_attempts": 1, "mode": "standard"})


def _required(name: str, backend: str) -> str:
    value = envstr(name)
    if not value:
        raise ImproperlyConfigured(f"PITR_STORAGE_BACKEND={backend} needs {name}: set it in the environment or .env")
    return value


def _azure_credentials() -> dict:
    connection = envstr("PITR_STORAGE_AZURE_CONNECTION_STRING")
    if connection:
        return {"connection_string": connection}
    account = _required("PITR_STORAGE_AZURE_ACCOUNT_NAME", "azure")
    key = envstr("PITR_STORAGE_AZURE_ACCOUNT_KEY")
    endpoint = os.environ.get("PITR_STORAGE_AZURE_ENDPOINT", "").rstrip("/")
    if endpoint:
        # A custom blob endpoint (Azurite, a sovereign cloud): AzureStorage takes it through a connection string.
        protocol = endpoint.split("://", 1)[0]
        parts = [f"DefaultEndpointsProtocol={protocol}", f"AccountName={account}",
                 *([f"AccountKey={key}"] if key else []), f"BlobEndpoint={endpoint}"]
        return {"connection_string": ";".join(parts) + ";"}
    return {"account_name": account, "account_key": key or None}
