"""The app's own processes: Redis, web (gunicorn), Celery worker, Celery beat and pgAdmin (PITR_PGADMIN).

With the docker driver each is a container (fleet/docker_services.py) running the same command line;
what follows is local mode.

Each runs under fleet.supervise, like the WAL capturer, so a killed process is
restarted with backoff and every restart is counted in RUN/NAME.state.json.
Logs go to PITR_HOME/logs/NAME.log, pid and state files to PITR_HOME/run.
Everything listens on loopback only.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from django.conf import settings

from fleet import pgadmin
from fleet.layout import Layout
from pitrsite import apitoken, procs, runner
from pitrsite.config import persistent_secret
from pitrsite.errors import ServiceError

SERVICES = ("redis", "web", "worker", "beat", "pgadmin")
PORT_SETTINGS = {"redis": "PITR_REDIS_PORT", "web": "PITR_WEB_PORT", "pgadmin": "PITR_PGADMIN_PORT"}
READY_TIMEOUT = 60.0  # a cold gunicorn or Celery start imports all of Django: seconds on a busy 2-core machine


def check_service(name: str) -> str:
    if name not in SERVICES:
        raise ServiceError(f"unknown service {name!r}: choose one of {', '.join(SERVICES)}")
    return name


def own_redis() -> bool:
    """True when the broker is the Redis we run ourselves (loopback, PITR_REDIS_PORT)."""
    broker = urlparse(settings.CELERY_BROKER_URL)
    return (broker.scheme == "redis" and broker.hostname in ("127.0.0.1", "localhost")
            and (broker.port or 6379) == settings.PITR_REDIS_PORT)


def managed_services() -> tuple[str, ...]:
    # A broker elsewhere (CELERY_BROKER_URL) is not ours to start or stop; pgAdmin is optional; PITR_SERVICES
    # narrows what this host runs (a second host: the worker only).
    chosen = [check_service(name) for name in settings.PITR_SERVICES] or SERVICES
    return tuple(s for s in SERVICES if s in chosen and (s != "redis" or own_redis())
                 and (s != "pgadmin" or settings.PITR_PGADMIN))


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if not binary:
        raise ServiceError("redis-server not found on PATH: apt-get install redis-server "
                           "(or point CELERY_BROKER_URL at another Redis)")
    return binary


def port(name: str) -> int | None:
    return {"redis": settings.PITR_REDIS_PORT, "web": settings.PITR_WEB_PORT,
            "pgadmin": settings.PITR_PGADMIN_PORT}.get(name)


def web_url(path: str = "/") -> str:
    return f"http://{settings.PITR_HOST}:{settings.PITR_WEB_PORT}{path}"


def argv(name: str, layout: Layout) -> list[str]:
    """The command line of a service; Python services run with this interpreter (the virtualenv's)."""
    python = sys.executable
    if check_service(name) == "redis":
        # A broker only: no persistence, so nothing to recover and nothing written but logs.
        return [redis_binary(), "--port", str(settings.PITR_REDIS_PORT), "--bind", settings.PITR_HOST,
                "--protected-mode", "yes", "--save", "", "--appendonly", "no", "--daemonize", "no",
                "--dir", str(layout.redis)]
    if name == "pgadmin":
        return pgadmin.argv()
    if name == "web":
        return [python, "-m", "gunicorn", "pitrsite.wsgi:application",
                "--bind", f"{settings.PITR_HOST}:{settings.PITR_WEB_PORT}", "--workers", "2",
                "--worker-class", "gthread", "--threads", "4",  # a client's wait for its job holds a thread only
                "--graceful-timeout", "10", "--access-logfile", "-", "--error-logfile", "-"]
    if name == "worker":
        return [python, "-m", "celery", "-A", "pitrsite", "worker", "--loglevel=INFO",
                "--concurrency=2", "--hostname=pitrsite@%h",
                *(["--queues", settings.PITR_WORKER_QUEUES] if settings.PITR_WORKER_QUEUES else [])]
    return [python, "-m", "celery", "-A", "pitrsite", "beat", "--loglevel=INFO",
            "--schedule", str(layout.run / "celerybeat-schedule")]


def status(name: str, layout: Layout | None = None) -> dict:
    """State, child pid, supervisor pid and restart count of one service (like the capturer's in fleet status)."""
    layout = layout or Layout.current()
    check_service(name)
    if name == "redis" and not own_redis():
        return {"state": "external", "pid": None, "restarts": None, "port": None}
    if name == "pgadmin" and not settings.PITR_PGADMIN:
        return {"state": "off", "pid": None, "restarts": None, "port": None}
    if settings.PITR_FLEET_DRIVER == "docker":
        from fleet import docker_services

        return docker_services.status(name, layout)
    supervisor = procs.read_pid(layout.run / f"{name}.supervisor.pid")
    child = procs.read_pid(layout.run / f"{name}.pid")
    if not procs.alive(supervisor):
        state = "stopped"
    elif not procs.alive(child):
        state = "restarting"  # the supervisor is waiting out its backoff
    else:
        state = "paused" if procs.paused(child) else "running"
    entry: dict = {"state": state, "pid": child if state in ("running", "paused") else None,
                   "supervisor_pid": supervisor if state != "stopped" else None,
                   "restarts": None, "last_exit": None, "port": port(name), "log": str(layout.logs / f"{name}.log")}
    state_file = layout.run / f"{name}.state.json"
    if state != "stopped" and state_file.exists():
        try:
            saved = json.loads(state_file.read_text())
        except (OSError, ValueError):
            saved = {}
        entry["restarts"] = saved.get("restarts", 0)
        entry["last_exit"] = saved.get("last_exit")
    return entry


def services_status(layout: Layout | None = None) -> dict:
    layout = layout or Layout.current()
    return {"home": str(layout.home), "web_url": web_url(),
            # pgAdmin only when it is on (PITR_PGADMIN): a service nobody asked for is not listed
            "services": {name: status(name, layout) for name in SERVICES if name != "pgadmin" or settings.PITR_PGADMIN}}


def up(layout: Layout | None = None) -> list[str]:
    """Start every service that is not running, idempotently; returns what was done."""
    layout = layout or Layout.current()
    apitoken.ensure()  # before the web answers: scripts/pitr restore|backup reads it (pitrsite/client.py)
    if settings.PITR_FLEET_DRIVER == "docker":
        from fleet import docker_services

        return docker_services.up(layout)
    names = managed_services()
    # Every check before the first start: a missing redis-server or a busy port leaves nothing half-started.
    commands = {name: argv(name, layout) for name in names}
    for directory in (layout.logs, layout.run, layout.redis):
        directory.mkdir(parents=True, exist_ok=True)
    pending = [name for name in names if status(name, layout)["state"] == "stopped"]
    for name in pending:
        check_port_free(name)
    done = []
    for name in names:
        if name not in pending:
            done.append(f"{name} already running")
            continue
        done.append(start(name, layout, commands[name]))
    return done


def start(name: str, layout: Layout, command: list[str]) -> str:
    """Start one service under the supervisor and wait until it answers (local mode)."""
    logfile = layout.logs / f"{name}.log"
    for directory in (layout.logs, layout.run):
        directory.mkdir(parents=True, exist_ok=True)
    if name == "pgadmin":
        pgadmin.prepare(layout)
    runner.start_supervised(name, command, layout.run, logfile, cwd=layout.run,
                            env=pgadmin.environment(layout) if name == "pgadmin" else None)
    wait_ready(name, layout, logfile, READY_TIMEOUT * (3 if name == "pgadmin" else 1))  # a Flask app of 600 MB
    return f"{name} started (pid {status(name, layout)['pid']}){describe(name)}"


def describe(name: str) -> str:
    if name == "redis":
        return f" on {settings.PITR_HOST}:{settings.PITR_REDIS_PORT}"
    if name == "web":
        return f" at {web_url()}"
    if name == "pgadmin":
        secret = pgadmin.password_file(Layout.current())
        return f" at {pgadmin.url('/')} (login {pgadmin.email()}, password in {secret})"
    return ""


def down(layout: Layout | None = None) -> list[str]:
    layout = layout or Layout.current()
    if settings.PITR_FLEET_DRIVER == "docker":
        from fleet import docker_services

        return docker_services.down(layout)
    done = []
    # Beat first so nothing new is queued, the broker last so the worker can finish talking to it.
    for name in ("pgadmin", "beat", "worker", "web", "redis"):
        if runner.stop_supervised(name, layout.run):
            done.append(f"{name} stopped")
    return done


def check_port_free(name: str) -> None:
    number = port(name)
    if number is not None and procs.port_in_use(settings.PITR_HOST, number):
        raise ServiceError(f"port {number} for {name} is already in use by another process: "
                           f"stop it or set {PORT_SETTINGS[name]} to a free port")


def wait_ready(name: str, layout: Layout, logfile: Path, timeout: float = READY_TIMEOUT) -> None:
    """Wait until the service answers (Redis: PING; web: HTTP) or, for Celery, its process stays up."""
    probe = {"redis": redis_answers, "web": web_answers, "pgadmin": pgadmin.answers}.get(name, lambda: True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = status(name, layout)
        if entry["state"] == "stopped":
            break
        if entry["state"] == "running" and probe():
            return
        if (entry["restarts"] or 0) >= 2 and entry["last_exit"]:
            raise ServiceError(f"{name} keeps exiting ({entry['last_exit'].get('how')}): see {logfile}")
        time.sleep(0.2)
    raise ServiceError(f"{name} did not come up within {timeout:.0f} s: see {logfile}")


def redis_answers() -> bool:
    import redis

    try:
        return bool(redis.Redis(host=settings.PITR_HOST, port=settings.PITR_REDIS_PORT, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def web_answers() -> bool:
    try:
        with urllib.request.urlopen(web_url("/admin/login/"), timeout=5) as response:
            return response.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code < 500  # it answers; what it answers is the app's business
    except (urllib.error.URLError, OSError):
        return False


def admin_password_file() -> Path:
    return Layout.current().secrets / "admin_password"


def ensure_admin(username: str = "admin") -> dict:
    """Create the admin superuser once, with a generated password kept in admin_password_file()."""
    from django.contrib.auth import get_user_model

    users = get_user_model().objects
    password_file = admin_password_file()
    if users.filter(username=username).exists():
        return {"created": False, "username": username,
                "password_file": str(password_file) if password_file.exists() else None}
    password = persistent_secret(password_file, 18)
    users.create_superuser(username=username, email="", password=password)
    return {"created": True, "username": username, "password_file": str(password_file)}
