"""pitrsite settings: every value from the environment (see .env.example)."""
from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from pitrsite import client, home
from pitrsite.config import (
    archive_storage_setting, database_from_url, default_pg_bindir, distinct_ports, envbool, envchoice, envfloat,
    envcron, envint, envport, envpow2, envstr, load_dotenv, persistent_secret,
)

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(Path(os.environ.get("PITR_ENV_FILE", BASE_DIR / ".env")))

# --- where pitrsite keeps everything it owns ---------------------------------
PITR_HOME = Path(os.environ.get("PITR_HOME") or BASE_DIR / "var").resolve()
try:
    PITR_HOME.mkdir(parents=True, exist_ok=True)
    _secret = envstr("DJANGO_SECRET_KEY") or persistent_secret(PITR_HOME / home.SECRETS / "django_secret_key")
except OSError as exc:
    raise ImproperlyConfigured(
        f"PITR_HOME {PITR_HOME} is not usable ({exc.strerror}): make it writable or set PITR_HOME to another directory"
    ) from None
PITR_WAL_ARCHIVE = Path(os.environ.get("PITR_WAL_ARCHIVE") or PITR_HOME / home.WAL_ARCHIVE)
PITR_BACKUP_DIR = Path(os.environ.get("PITR_BACKUP_DIR") or PITR_HOME / home.BACKUPS)

# --- the fleet ---------------------------------------------------------------
PITR_FLEET_DRIVER = envchoice("PITR_FLEET_DRIVER", "local", ("local", "docker"))
# The docker driver (fleet/docker.py): containers are named PROJECT-ROLE and labelled with the project;
# the images build FROM this base (official images where a registry is reachable; scripts/pitr makes
# pitrsite-base:bookworm with debootstrap where none is).
PITR_DOCKER_PROJECT = envstr("PITR_DOCKER_PROJECT", "pitrsite")
PITR_DOCKER_BASE_IMAGE = envstr("PITR_DOCKER_BASE_IMAGE", "pitrsite-base:bookworm")
PITR_PG_BINDIR = os.environ.get("PITR_PG_BINDIR") or default_pg_bindir()
PITR_HOST = "127.0.0.1"  # loopback only, by design
PITR_PRIMARY_PORT = envport("PITR_PRIMARY_PORT", 55432)
PITR_STANDBY_PORT = envport("PITR_STANDBY_PORT", 55433)
PITR_RESTORE_PORT = envport("PITR_RESTORE_PORT", 55434)
PITR_PG_OS_USER = os.environ.get("PITR_PG_OS_USER", "postgres")  # used only when running as root
PITR_PG_SUPERUSER = os.environ.get("PITR_PG_SUPERUSER", "postgres")
PITR_REPL_USER = os.environ.get("PITR_REPL_USER", "replicator")
PITR_DBNAME = os.environ.get("PITR_DBNAME", "pitr")
PITR_CAPTURE_SLOT = os.environ.get("PITR_CAPTURE_SLOT", "pitr_slot")
PITR_STANDBY_SLOT = os.environ.get("PITR_STANDBY_SLOT", "standby_slot")
# The catalog's name for the fleet above (a managed server); servers added with `server add` sit beside it.
PITR_DEMO_SERVER = os.environ.get("PITR_DEMO_SERVER", "demo")
# initdb --wal-segsize, in MiB; the catalog reads the real size from the server.
PITR_WAL_SEGSIZE_MB = envpow2("PITR_WAL_SEGSIZE_MB", 16, 1, 1024)

# Status warns (and exits non-zero) when the archive, backup or restore filesystem has less free space.
PITR_DISK_WARN_PERCENT = envfloat("PITR_DISK_WARN_PERCENT", 10.0)
# Status alerts (and exits non-zero) when a server keeps more WAL than this for a capture slot: capture is
# behind or stopped, and the server's pg_wal grows until it catches up. 0 turns the alert off.
PITR_SLOT_RETAINED_WARN_BYTES = envint("PITR_SLOT_RETAINED_WARN_BYTES", 1 << 30, 0)

# --- schedules (seconds; 0 turns one off) -----------------------------------
PITR_INDEX_INTERVAL = envfloat("PITR_INDEX_INTERVAL", 5.0)
PITR_SCRUB_INTERVAL = envfloat("PITR_SCRUB_INTERVAL", 3600.0)
PITR_SCRUB_MB_PER_S = envfloat("PITR_SCRUB_MB_PER_S", 20.0)
PITR_REAP_INTERVAL = envfloat("PITR_REAP_INTERVAL", 15.0)
# Scheduled base backups: cron syntax in TIME_ZONE ("0 2 * * *": daily at 02:00), "disable" turns them off.
PITR_BACKUP_SCHEDULE = envcron("PITR_BACKUP_SCHEDULE", "0 2 * * *")
# The overview and /metrics warn when the newest done base backup is older than this (s; 0 = never).
PITR_BACKUP_MAX_AGE = envfloat("PITR_BACKUP_MAX_AGE", 2 * 86400.0)

# --- Django ------------------------------------------------------------------
SECRET_KEY = _secret
DEBUG = envbool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h]
PITR_WEB_PORT = envport("PITR_WEB_PORT", client.WEB_PORT)  # the client reads the default there

INSTALLED_APPS = [
    # The admin modules (and the dashboard forms they use) load with the URLs (pitrsite/urls.py), not in
    # django.setup(): a management command such as `restore` never serves the admin.
    "django.contrib.admin.apps.SimpleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "walcatalog",
    "restores",
    "chaos",
    "fleet",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # The server a page is about (?server=NAME): the catalog it reads is that server's only.
    "dashboard.middleware.ServerScope",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "dashboard.security.csp_middleware",
]
# Failed logins: this many per user name and address within the window (s), then refused until it passes.
PITR_LOGIN_FAILURES = envint("PITR_LOGIN_FAILURES", 5)
PITR_LOGIN_WINDOW = envint("PITR_LOGIN_WINDOW", 900)
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    # Shared by every web worker of this host, so a throttle is not multiplied by the worker count.
    "throttle": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                 "LOCATION": str(PITR_HOME / home.RUN / "throttle")},
}

ROOT_URLCONF = "pitrsite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "pitrsite.wsgi.application"

DATABASES = {
    "default": database_from_url(
        os.environ.get("DATABASE_URL") or f"sqlite:///{PITR_HOME / 'pitrsite.sqlite3'}", BASE_DIR
    )
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = False
# The dashboard's one time format, with the zone, in the admin too (dashboard/timefmt.py is the same).
FORMAT_MODULE_PATH = "pitrsite.formats"
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# The dashboard's own login admits any active user (read-only unless staff); /admin/login/ admits staff only.
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
# /metrics without a session: a bearer token when set, else loopback clients only (dashboard/metrics.py).
PITR_METRICS_TOKEN = envstr("PITR_METRICS_TOKEN")
# Serve static files without collectstatic (runserver/gunicorn with DEBUG off).
WHITENOISE_USE_FINDERS = True

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
                    if not DEBUG else "django.contrib.staticfiles.storage.StaticFilesStorage"},
    # Copies of WAL and backups (walcatalog/storage.py): filesystem, s3, azure or gcs from PITR_STORAGE_*.
    "archive": archive_storage_setting(PITR_HOME),
}

# --- Celery ------------------------------------------------------------------
PITR_REDIS_PORT = envport("PITR_REDIS_PORT", 56379)
# pgAdmin 4 (fleet/pgadmin.py): a supervised service (local) or the pgadmin container (docker), its login
# PITR_PGADMIN_EMAIL with a generated password in PITR_HOME/secrets/pgadmin_password.
PITR_PGADMIN = envbool("PITR_PGADMIN", True)
PITR_PGADMIN_PORT = envport("PITR_PGADMIN_PORT", 55050)
PITR_PGADMIN_EMAIL = envstr("PITR_PGADMIN_EMAIL", "admin@pitrsite.test")
PITR_PGADMIN_VENV = Path(envstr("PITR_PGADMIN_VENV") or BASE_DIR / ".cache" / "pgadmin-venv")
distinct_ports({"PITR_PGADMIN_PORT": PITR_PGADMIN_PORT,
                "PITR_PRIMARY_PORT": PITR_PRIMARY_PORT, "PITR_STANDBY_PORT": PITR_STANDBY_PORT,
                "PITR_RESTORE_PORT": PITR_RESTORE_PORT, "PITR_REDIS_PORT": PITR_REDIS_PORT,
                "PITR_WEB_PORT": PITR_WEB_PORT})
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or f"redis://127.0.0.1:{PITR_REDIS_PORT}/0"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None  # progress and outcome live in our job rows, not in Celery
CELERY_TASK_IGNORE_RESULT = True
# A job lost with its worker is re-run never: the job row says "interrupted".
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = TIME_ZONE
# The queues this host's worker serves (`services up`): a server's work goes to the queue it records (its
# host holds its archive and restore target). Empty: Celery's default queue "celery" only.
PITR_WORKER_QUEUES = ",".join(q.strip() for q in os.environ.get("PITR_WORKER_QUEUES", "").split(",") if q.strip())
# Which services `services up` starts on this host (comma-separated; empty: all of them). A second host runs
# only a worker: one beat and one web for the installation.
PITR_SERVICES = tuple(s.strip() for s in os.environ.get("PITR_SERVICES", "").split(",") if s.strip())

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "pitrsite": {"handlers": ["console"], "level": os.environ.get("PITR_LOG_LEVEL", "INFO")},
        "walcatalog": {"handlers": ["console"], "level": os.environ.get("PITR_LOG_LEVEL", "INFO")},
        "restores": {"handlers": ["console"], "level": os.environ.get("PITR_LOG_LEVEL", "INFO")},
        "fleet": {"handlers": ["console"], "level": os.environ.get("PITR_LOG_LEVEL", "INFO")},
    },
}

# --- backups -----------------------------------------------------------------
# pg_basebackup --max-rate (e.g. "50M"): spares the primary's disks; empty means no limit.
PITR_BACKUP_MAX_RATE = os.environ.get("PITR_BACKUP_MAX_RATE", "")

# --- restores ----------------------------------------------------------------
PITR_RESTORE_TIMEOUT = envfloat("PITR_RESTORE_TIMEOUT", 3600.0, lo=1.0)
# Restore drill (restores/drill.py): restore the newest moment into the restore target, check it, every
# PITR_DRILL_INTERVAL s (0 = off). Daily: a broken restore path is found within a day, and a drill (a full
# restore, replacing the restore target's contents) stays a small share of the machine's time.
PITR_DRILL_INTERVAL = envfloat("PITR_DRILL_INTERVAL", 86400.0)

# --- cloud storage (walcatalog/storage.py, uploader.py, retention.py) ------------------------
PITR_UPLOAD_INTERVAL = envfloat("PITR_UPLOAD_INTERVAL", 30.0)
# A snapshot of the growing .partial goes to storage at most every N s (0 = never): with the upload and index
# intervals it bounds how old the newest commit held in storage can get while WAL trickles in.
PITR_PARTIAL_UPLOAD_INTERVAL = envfloat("PITR_PARTIAL_UPLOAD_INTERVAL", 60.0)
PITR_UPLOAD_PARALLEL = envint("PITR_UPLOAD_PARALLEL", 4, 1, 64)
PITR_DOWNLOAD_PARALLEL = envint("PITR_DOWNLOAD_PARALLEL", 8, 1, 64)
PITR_STORAGE_RETRIES = envint("PITR_STORAGE_RETRIES", 4, 1, 20)
# WAL objects are stored zstd-compressed (pgbench WAL packs ~15x: what a restore downloads and the bucket bills);
# "none" stores new ones as they are. Objects of either form are read whatever this says.
PITR_STORAGE_WAL_COMPRESSION = envchoice("PITR_STORAGE_WAL_COMPRESSION", "zstd", ("zstd", "none"))
# Retention: keep the newest N verified backups and/or every moment of the last D days (0 = no such limit;
# both 0 = nothing is ever deleted). When both are set, what either keeps is kept.
PITR_RETENTION_KEEP_BACKUPS = envint("PITR_RETENTION_KEEP_BACKUPS", 0, 0, 100000)
PITR_RETENTION_DAYS = envfloat("PITR_RETENTION_DAYS", 0.0)
PITR_RETENTION_INTERVAL = envfloat("PITR_RETENTION_INTERVAL", 3600.0)
