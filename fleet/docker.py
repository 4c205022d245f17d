"""The docker driver: the seed's containers through the Docker SDK (PITR_FLEET_DRIVER=docker).

pg_primary and pg_standby run PostgreSQL as the container's process; wal_capturer's entrypoint runs the
pg_receivewal --slot loop for as long as it lives (docker/capturer/run_wal_capturer.sh); restore_target
is alive all the time and idle, PostgreSQL started inside it (docker exec pg_ctl) only by a restore.
Pause is `docker pause`, restart `docker restart`, kill SIGKILL.

Every container uses the host network (loopback ports from settings; the engine runs with
--bridge=none --iptables=false) and bind-mounts the data home at the same path, so data directories,
the WAL archive and backups are the same files as for the local driver: provisioning (initdb, the
standby's clone), the restore engine's extraction and WAL staging stay file operations on this host.
The containers share the host's pid namespace too, so a server's postmaster.pid names a process this
host can see: the reaper, status and the chaos harness check processes by pid with either driver.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from django.conf import settings

from fleet import images, pg, provision
from fleet.layout import check_role
from fleet.local import LocalDriver
from fleet.pg import ToolFailed, first_line
from pitrsite import procs, runner
from pitrsite.errors import FleetError

# The seed's container names, after the project prefix (PITR_DOCKER_PROJECT).
CONTAINERS = {"primary": "pg_primary", "standby": "pg_standby", "capturer": "wal_capturer",
              "restore_target": "restore_target"}
STOP_SIGNALS = {"smart": "SIGTERM", "fast": "SIGINT", "immediate": "SIGQUIT"}
START_TIMEOUT = 120.0
UNPAUSER = """
import sys, time
import docker
time.sleep(float(sys.argv[1]))
container = docker.from_env().containers.get(sys.argv[2])
if container.status == "paused":
    container.unpause()
"""


def engine() -> Any:
    """A client of the local Docker engine, or one line saying what to install and start."""
    import docker

    try:
        # API version negotiated: engine 20.10 speaks 1.41. (mypy takes `docker` for this module: no stubs.)
        client = docker.from_env(timeout=300)  # type: ignore[attr-defined]
        client.ping()
    except docker.errors.DockerException as exc:
        raise FleetError(f"no Docker engine answers ({first_line(exc)}): apt-get install docker.io and start "
                         "`dockerd --bridge=none --iptables=false` (scripts/pitr does both)") from None
    return client


def project_label() -> str:
    return f"pitrsite.project={settings.PITR_DOCKER_PROJECT}"


def container_name(service: str) -> str:
    return f"{settings.PITR_DOCKER_PROJECT}-{service}"


class DockerDriver(LocalDriver):
    name = "docker"

    def __init__(self, layout=None, client=None):
        super().__init__(layout)
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = engine()
        return self._client

    # --- the whole fleet -------------------------------------------------
    def up(self) -> list[str]:
        self._check_home()
        done = [f"built image {tag}" for tag in images.ensure(self.client, ("postgres", "capturer"))]
        done += [provision.primary(self), provision.standby(self), self._ensure_capturer(),
                 self._ensure_restore_target()]
        return [line for line in done if line]

    def down(self) -> list[str]:
        done = super().down()  # each role stopped the way it stops (a clean shutdown of the servers)
        for container in self.client.containers.list(all=True, filters={"label": project_label()}):
            container.remove(force=True)
            done.append(f"container {container.name} removed")
        return done

    # --- one role ----------------------------------------------------------
    def container(self, role: str) -> Any | None:
        import docker

        try:
            return self.client.containers.get(container_name(CONTAINERS[check_role(role)]))
        except docker.errors.NotFound:
            return None

    def state(self, role: str) -> str:
        container = self.container(role)
        if container is None or container.status not in ("running", "paused"):
            return "stopped"
        if container.status == "paused":
            return "paused"
        if role == "restore_target" and not procs.alive(super().pid(role)):
            return "stopped"  # the container idles until a restore starts PostgreSQL in it
        return "running"

    def pid(self, role: str) -> int | None:
        container = self.container(role)
        if container is None or container.status not in ("running", "paused"):
            return None
        if role == "capturer":
            return self._receiver_pid(container) or container.attrs["State"]["Pid"] or None
        return super().pid(role)  # postmaster.pid: a host pid (the containers share the host's pid namespace)

    def details(self, role: str) -> dict:
        container = self.container(role)
        if container is None:
            return {"container": None}
        health = container.attrs["State"].get("Health") or {}
        return {"container": container.short_id, "container_name": container.name,
                "image": (container.image.tags or [container.image.short_id])[0],
                "container_state": container.status, "health": health.get("Status")}

    def start(self, role: str, wait: bool = True) -> None:
        if check_role(role) == "capturer":
            self._ensure_capturer()
            return
        datadir = self._ready_to_start(role)
        if datadir is None:
            return
        self._own_log(role)
        if role == "restore_target":
            container = self._ensure_idle_target()
            self._exec(container, ["pg_ctl", "-D", str(datadir), "-l", str(self.layout.logfile(role)),
                                   *(["-w", "-t", "120"] if wait else ["-W"]), "-s", "start"], f"starting {role}")
            return
        self._run_server(role)
        if wait:
            self._wait_ready(role)

    def stop(self, role: str, mode: str = "fast") -> None:
        container = self.container(role)
        if container is None or container.status not in ("running", "paused"):
            return
        if container.status == "paused":
            container.unpause()
        if role == "capturer":
            container.stop(timeout=20)  # the entrypoint stops pg_receivewal with SIGINT: a clean flush
        elif role == "restore_target":
            if procs.alive(super().pid(role)):
                self._exec(container, ["pg_ctl", "-D", str(self.layout.datadir(role)), "-m", mode, "-w", "-t", "120",
                                       "-s", "stop"], f"stopping {role}")
        else:
            container.kill(signal=STOP_SIGNALS[mode])
            container.wait(timeout=180)

    def restart(self, role: str) -> None:
        """`docker restart` of the role's container (the restore target, idle between restores: its server)."""
        if role == "restore_target":
            super().restart(role)
            return
        container = self.container(role)
        if container is None or container.status != "running":
            raise FleetError(f"{role} is not running: run `python manage.py fleet start {role}`")
        container.restart(timeout=120)
        if role != "capturer":
            self._wait_ready(role)

    def pause(self, role: str) -> None:
        if self.state(role) != "running":
            raise FleetError(f"{role} is not running: run `python manage.py fleet start {role}`")
        self._get(role).pause()

    def resume(self, role: str) -> None:
        container = self.container(role)
        if container is not None and container.status == "paused":
            container.unpause()

    def resume_later(self, role: str, seconds: float) -> None:
        """A detached `docker unpause` after ``seconds``: a frozen container outlives a dead chaos run otherwise."""
        runner.popen([sys.executable, "-c", UNPAUSER, str(seconds), container_name(CONTAINERS[role])],
                     detached=True, stderr=subprocess.DEVNULL)

    def kill(self, role: str) -> None:
        """SIGKILL: a crash. The capturer's pg_receivewal dies and its container's loop starts it again; a
        server's container dies with its postmaster; the restore target's postmaster dies in its idle container."""
        if self.state(role) == "stopped":
            raise FleetError(f"{role} is not running: run `python manage.py fleet start {role}`")
        self.resume(role)
        pid = self.pid(role)
        if role in ("capturer", "restore_target"):
            if pid:
                os.kill(pid, signal.SIGKILL)
                procs.wait_gone(pid, 10)
            return
        container = self._get(role)
        container.kill(signal="SIGKILL")
        container.wait(timeout=30)

    def run_in(self, role: str, argv: list[str]) -> str:
        """docker exec in the role's container, as postgres."""
        return self._exec(self._get(role), argv, f"running {argv[0]} in {container_name(CONTAINERS[role])}")

    # --- containers --------------------------------------------------------
    def _get(self, role: str) -> Any:
        container = self.container(role)
        if container is None:
            raise FleetError(f"{role} has no container {container_name(CONTAINERS[role])}: "
                             "run `python manage.py fleet up`")
        return container

    def _mounts(self) -> dict:
        """The data home, and the archive and backup directories when they live elsewhere, at the same paths."""
        paths = [self.layout.home, self.layout.archive, self.layout.backups]
        mounts = {}
        for path in paths:
            if not any(path != other and path.is_relative_to(other) for other in paths):
                mounts[str(path)] = {"bind": str(path), "mode": "rw"}
        return mounts

    def _spec(self, role: str, image: str, **extra) -> dict:
        return {"image": images.tag(image), "name": container_name(CONTAINERS[role]), "detach": True,
                "network_mode": "host", "pid_mode": "host", "volumes": self._mounts(),
                "labels": {"pitrsite.project": settings.PITR_DOCKER_PROJECT, "pitrsite.role": role,
                           "pitrsite.home": str(self.layout.home)},
                "environment": {"TZ": "UTC", "PGPASSFILE": str(pg.passfile())}, **extra}

    def _replace(self, role: str, spec: dict) -> Any:
        """A new container from the current spec (settings may have changed since the last one)."""
        old = self.container(role)
        if old is not None:
            old.remove(force=True)
        return self.client.containers.run(**spec)

    def _health(self, *test: str) -> dict:
        return {"test": ["CMD", *test], "interval": 5 * 10**9, "timeout": 3 * 10**9, "retries": 3}

    def _run_server(self, role: str) -> None:
        port = str(self.layout.port(role))
        # The server's log goes where the local driver's goes (logs/ROLE.log): status and proofs read it there.
        command = ["/bin/sh", "-c", 'exec postgres -D "$0" >>"$1" 2>&1',
                   str(self.layout.datadir(role)), str(self.layout.logfile(role))]
        self._replace(role, self._spec(role, "postgres", command=command, stop_signal="SIGINT",
                                       healthcheck=self._health("pg_isready", "-q", "-h", settings.PITR_HOST,
                                                                "-p", port)))

    def _ensure_idle_target(self) -> Any:
        container = self.container("restore_target")
        if container is not None and container.status == "paused":
            container.unpause()
        if container is not None and container.status == "running":
            return container
        port = str(self.layout.port("restore_target"))
        return self._replace("restore_target", self._spec(
            "restore_target", "postgres", command=["sleep", "infinity"], stop_signal="SIGKILL",
            # idle is healthy; once a restore has started its server, healthy means it answers
            healthcheck={**self._health("pg_isready", "-q", "-h", settings.PITR_HOST, "-p", port),
                         "test": ["CMD", "sh", "-c", 'test ! -f "$0/postmaster.pid" || pg_isready -q -h "$1" -p "$2"',
                                  str(self.layout.datadir("restore_target")), settings.PITR_HOST, port]}))

    def _ensure_restore_target(self) -> str:
        super()._ensure_restore_target()
        container = self._ensure_idle_target()
        return f"restore target container {container.name} idle (port {self.layout.port('restore_target')})"

    def _ensure_capturer(self) -> str:
        container = self.container("capturer")
        if container is not None and container.status in ("running", "paused"):
            return "capturer already running"
        pg.give_to_server(self.layout.archive)
        self._own_log("capturer")
        env = {"PGHOST": settings.PITR_HOST, "PGPORT": str(self.layout.port("primary")),
               "PGUSER": settings.PITR_REPL_USER, "PGCONNECT_TIMEOUT": "10",
               "PITR_WAL_ARCHIVE": str(self.layout.archive), "PITR_CAPTURE_SLOT": settings.PITR_CAPTURE_SLOT,
               "PITR_CAPTURER_LOG": str(self.layout.logfile("capturer"))}
        spec = self._spec("capturer", "capturer", restart_policy={"Name": "unless-stopped"},
                          healthcheck=self._health("pgrep", "-x", "pg_receivewal"))
        spec["environment"].update(env)
        container = self._replace("capturer", spec)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self._receiver_pid(container):
            time.sleep(0.2)
        if not self._receiver_pid(container):
            raise FleetError(f"capturer did not start in container {container.name}: "
                             f"see {self.layout.logfile('capturer')}")
        return (f"capturer container {container.name} streaming into {self.layout.archive} "
                f"through slot {settings.PITR_CAPTURE_SLOT}")

    def _receiver_pid(self, container: Any) -> int | None:
        """pg_receivewal's host pid, from `docker top` of the capturer's container."""
        try:
            top = container.top(ps_args="-o pid,comm")
        except Exception:  # the container is stopping or gone: no receiver
            return None
        for row in top.get("Processes") or []:
            if row[-1] == "pg_receivewal":
                return int(row[0])
        return None

    def _own_log(self, role: str) -> None:
        """The role's log file, appendable by the server account inside the container."""
        logfile = self.layout.logfile(role)
        logfile.touch()
        account = pg.server_account()
        if account is not None:
            os.chown(logfile, account.pw_uid, account.pw_gid)

    def _exec(self, container: Any, argv: list[str], step: str) -> str:
        code, output = container.exec_run(argv, user="postgres", environment={"TZ": "UTC"})
        text = (output or b"").decode(errors="replace")
        if code != 0:
            raise ToolFailed(step, runner.error_line(text))
        return text

    def _wait_ready(self, role: str) -> None:
        """Like pg_ctl -w: until postmaster.pid says ready (or standby), or the container exits."""
        deadline = time.monotonic() + START_TIMEOUT
        pidfile = self.layout.datadir(role) / "postmaster.pid"
        while time.monotonic() < deadline:
            container = self._get(role)
            if container.status not in ("running", "created"):
                raise FleetError(f"{role} did not start (container {container.status}): "
                                 f"see {self.layout.logfile(role)}")
            try:
                lines = pidfile.read_text().splitlines()
            except FileNotFoundError:
                lines = []
            if len(lines) >= 8 and lines[7].strip() in ("ready", "standby") and procs.alive(int(lines[0])):
                return
            time.sleep(0.2)
        raise FleetError(f"{role} did not become ready within {START_TIMEOUT:.0f} s: see {self.layout.logfile(role)}")
