"""The app's services as containers (docker driver): redis, web, worker, beat and pgadmin.

Each container runs the command line local mode runs (fleet.services.argv), with the host network and
pid namespace, and Docker restarts it when its process dies (restart policy unless-stopped: a SIGKILLed
worker comes back, as under the local supervisor; the restart count is the container's). Where no
registry is reachable the images hold no Python packages: the source, the virtualenv and its Python are
mounted read-only from the host at the same paths (the development mounts of
docker-compose.override.yml), so a container runs the code on the host. web, worker and beat drive the
fleet, so they get the engine's socket.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from django.conf import settings

from fleet import images, pgadmin, services
from fleet.docker import DockerDriver, container_name
from fleet.layout import Layout

PROJECT = Path(__file__).resolve().parent.parent
PASSED_ENV = ("PITR_", "DJANGO_", "CELERY_", "DATABASE_URL", "TZ", "LANG")
SOCKET = "/var/run/docker.sock"


def _container(driver: DockerDriver, name: str) -> Any | None:
    import docker

    try:
        return driver.client.containers.get(container_name(name))
    except docker.errors.NotFound:
        return None


def _python_mounts(prefix: Path) -> list[Path]:
    """A virtualenv and the Python it was made from (pyvenv.cfg's home)."""
    paths = [prefix.resolve()]
    cfg = prefix / "pyvenv.cfg"
    if cfg.exists():
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                paths.append(Path(value.strip()).resolve().parent)
    return paths


def _spec(driver: DockerDriver, name: str, layout: Layout) -> dict:
    volumes = driver._mounts()
    readonly = _python_mounts(Path(sys.prefix)) + _python_mounts(Path(sys.base_prefix))
    if name == "pgadmin":
        readonly = _python_mounts(Path(settings.PITR_PGADMIN_VENV))
    else:
        volumes[str(PROJECT)] = {"bind": str(PROJECT), "mode": "rw"}  # collectstatic writes into it
        volumes[SOCKET] = {"bind": SOCKET, "mode": "rw"}
    for path in readonly:
        volumes.setdefault(str(path), {"bind": str(path), "mode": "ro"})
    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV)}
    env.update({"PYTHONPATH": str(PROJECT), "PYTHONUNBUFFERED": "1", "HOME": "/root"})
    if name == "pgadmin":
        env.update(pgadmin.environment(layout))
    return {"image": images.tag("pgadmin" if name == "pgadmin" else "app"), "name": container_name(name),
            "command": services.argv(name, layout), "detach": True, "network_mode": "host", "pid_mode": "host",
            "working_dir": str(layout.run), "volumes": volumes, "environment": env,
            "restart_policy": {"Name": "unless-stopped"},
            "labels": {"pitrsite.project": settings.PITR_DOCKER_PROJECT, "pitrsite.role": name,
                       "pitrsite.home": str(layout.home)}}


def status(name: str, layout: Layout) -> dict:
    container = _container(DockerDriver(layout), name)
    entry: dict = {"state": "stopped", "pid": None, "restarts": None, "last_exit": None,
                   "port": services.port(name), "log": f"docker logs {container_name(name)}",
                   "container": None}
    if container is None:
        return entry
    state = container.attrs["State"]
    entry.update(container=container.short_id, image=(container.image.tags or [container.image.short_id])[0],
                 restarts=container.attrs.get("RestartCount", 0))
    if container.status in ("running", "paused", "restarting"):
        entry["state"] = container.status
    if container.status in ("running", "paused"):
        entry["pid"] = state.get("Pid") or None
    finished = state.get("FinishedAt") or ""
    if finished and not finished.startswith("0001"):  # Docker's zero time: it never exited
        entry["last_exit"] = {"at": finished, "how": f"exited with code {state.get('ExitCode')}"}
    return entry


def up(layout: Layout) -> list[str]:
    driver = DockerDriver(layout)
    names = services.managed_services()
    done = [f"built image {tag}" for tag in
            images.ensure(driver.client, ("app", "pgadmin") if "pgadmin" in names else ("app",))]
    for directory in (layout.logs, layout.run, layout.redis):
        directory.mkdir(parents=True, exist_ok=True)
    pending = [name for name in names if status(name, layout)["state"] not in ("running", "paused", "restarting")]
    for name in pending:
        services.check_port_free(name)
    for name in names:
        if name not in pending:
            done.append(f"{name} already running")
            continue
        if name == "pgadmin":
            pgadmin.prepare(layout)
        old = _container(driver, name)
        if old is not None:
            old.remove(force=True)
        driver.client.containers.run(**_spec(driver, name, layout))
        services.wait_ready(name, layout, Path(f"`docker logs {container_name(name)}`"),
                            services.READY_TIMEOUT * (3 if name == "pgadmin" else 1))
        done.append(f"{name} container {container_name(name)} started{services.describe(name)}")
    return done


def down(layout: Layout) -> list[str]:
    driver = DockerDriver(layout)
    done = []
    for name in ("pgadmin", "beat", "worker", "web", "redis"):  # the broker last, as in local mode
        container = _container(driver, name)
        if container is None:
            continue
        if container.status == "paused":
            container.unpause()
        if container.status in ("running", "restarting", "paused"):
            container.stop(timeout=20)
            done.append(f"{name} stopped")
        container.remove(force=True)
    return done
