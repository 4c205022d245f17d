"""The local driver: every role is a process on this machine, under one data home.

Servers run with pg_ctl on loopback ports; the capturer is pg_receivewal under
fleet.supervise. Pause is SIGSTOP of a server's whole process tree, resume is
SIGCONT, kill is SIGKILL. Creating the primary and the standby from nothing is
fleet/provision.py; this module runs the roles and prepares the home they live in.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
from django.conf import settings

from fleet import pg, pgconf, provision
from fleet.driver import refuse_foreign_action
from fleet.layout import ROLES, SERVER_ROLES, Layout, check_role
from pitrsite import procs, runner
from pitrsite.errors import FleetError

log = logging.getLogger(__name__)

RESUMER = """
import os, signal, sys, time
time.sleep(float(sys.argv[1]))
for pid in sys.argv[2:]:
    try:
        os.kill(int(pid), signal.SIGCONT)
    except OSError:
        pass
"""


class LocalDriver:
    name = "local"
    roles: tuple[str, ...] = ROLES

    def __init__(self, layout: Layout | None = None):
        self.layout = layout or Layout.current()

    @property
    def slot(self) -> str:
        """The capture slot on the primary."""
        return settings.PITR_CAPTURE_SLOT

    def connect(self, role: str = "primary", *, dbname: str | None = None, timeout: int = 5,
                **kwargs) -> psycopg.Connection:
        """A connection to one of this server's nodes as the superuser (the restore target inherits it)."""
        return pg.connect(self.layout.port(role), dbname=dbname, timeout=timeout, **kwargs)

    # --- the whole fleet -------------------------------------------------
    def up(self) -> list[str]:
        """Create and start every role, idempotently; returns what was done."""
        self._check_home()
        done = [provision.primary(self), provision.standby(self), self._ensure_capturer(),
                self._ensure_restore_target()]
        return [line for line in done if line]

    def down(self) -> list[str]:
        done = []
        for role in ("capturer", "standby", "restore_target", "primary"):
            if self.state(role) != "stopped":
                self.stop(role)
                done.append(f"{role} stopped")
        return done

    # --- one role ----------------------------------------------------------
    def state(self, role: str) -> str:
        pid = self.pid(role)
        if not procs.alive(pid):
            return "stopped"
        return "paused" if procs.paused(pid) else "running"

    def pid(self, role: str) -> int | None:
        """The postmaster of a server role; pg_receivewal for the capturer."""
        if check_role(role) == "capturer":
            return procs.read_pid(self.layout.run / "capturer.pid")
        return procs.read_pid(self.layout.datadir(role) / "postmaster.pid")

    def start(self, role: str, wait: bool = True) -> None:
        """Start a role; wait=False returns at once (a server in long recovery is followed by the caller)."""
        if check_role(role) == "capturer":
            self._ensure_capturer()
            return
        datadir = self._ready_to_start(role)
        if datadir is None:
            return
        pg.give_to_server(self.layout.logs, self.layout.run)
        pg.run([pg.tool("pg_ctl"), "-D", str(datadir), "-l", str(self.layout.logfile(role)),
                *(["-w", "-t", "120"] if wait else ["-W"]), "-s", "start"], step=f"starting {role}", timeout=180)

    def _ready_to_start(self, role: str) -> Path | None:
        """The data directory to start, checked and configured; None when the role runs already."""
        state = self.state(role)
        if state == "paused":
            raise FleetError(f"{role} is paused: run `python manage.py fleet resume {role}`")
        if state == "running":
            return None
        datadir = self.layout.datadir(role)
        if not (datadir / "PG_VERSION").exists():
            hint = "run a restore first" if role == "restore_target" else "run `python manage.py fleet up`"
            raise FleetError(f"{role} has no data directory at {datadir}: {hint}")
        self._check_port_free(role)
        if not (datadir / "pitrsite.node.conf").exists() or role != "restore_target":
            self.write_node_conf(role)  # a restore writes the restore target's own, with recovery settings
        return datadir

    def stop(self, role: str, mode: str = "fast") -> None:
        if check_role(role) == "capturer":
            runner.stop_supervised("capturer", self.layout.run)
            return
        if self.state(role) == "paused":
            self.resume(role)
        if self.state(role) == "stopped":
            return
        pg.run([pg.tool("pg_ctl"), "-D", str(self.layout.datadir(role)), "-m", mode, "-w", "-t", "120", "-s",
                "stop"], step=f"stopping {role}", timeout=180)

    def restart(self, role: str) -> None:
        if check_role(role) == "capturer":
            # SIGHUP makes the supervisor stop pg_receivewal gracefully and start it again.
            pid = procs.read_pid(self.layout.run / "capturer.supervisor.pid")
            if not procs.alive(pid):
                raise FleetError("capturer is not running: run `python manage.py fleet start capturer`")
            self.resume(role)
            os.kill(pid, signal.SIGHUP)
            return
        self.stop(role)
        self.start(role)

    def pause(self, role: str) -> None:
        pid = self._running_pid(role)
        procs.signal_tree(pid, signal.SIGSTOP)

    def resume(self, role: str) -> None:
        pid = self.pid(role)
        if procs.alive(pid):
            procs.signal_tree(pid, signal.SIGCONT)

    def resume_later(self, role: str, seconds: float) -> None:
        """A detached process that SIGCONTs the role's processes after ``seconds``: a paused server never
        stays stopped because whoever paused it died (a SIGCONT to a running process does nothing)."""
        pid = self.pid(role)
        if not procs.alive(pid):
            return
        pids = [pid, *procs.descendants(pid)]
        runner.popen([sys.executable, "-c", RESUMER, str(seconds), *map(str, pids)], detached=True,
                     stderr=subprocess.DEVNULL)

    def details(self, role: str) -> dict:
        return {}

    def run_in(self, role: str, argv: list[str]) -> str:
        check_role(role)
        return pg.run(argv, step=f"running {argv[0]} for the {role}", env=pg.libpq_env()).stdout

    def check_action(self, action: str) -> None:
        refuse_foreign_action(self.name, action)

    def kill(self, role: str) -> None:
        """SIGKILL: a crash. Servers recover on next start; the capturer is restarted by its supervisor."""
        pid = self._running_pid(role)
        if procs.paused(pid):
            procs.signal_tree(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
        if role != "capturer":
            # The backends notice their postmaster is gone and exit; wait so a start can follow.
            for child in procs.descendants(pid):
                procs.wait_gone(child, 10)
            procs.wait_gone(pid, 10)

    def put_file(self, role: str, relpath: str, content: str | bytes, mode: int = 0o600) -> Path:
        """Write a file into a server's data directory, owned by the server account."""
        path = self.layout.datadir(role) / relpath
        data = content.encode() if isinstance(content, str) else content
        tmp = path.with_name(path.name + ".pitrsite-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        account = pg.server_account()
        if account is not None:
            os.chown(tmp, account.pw_uid, account.pw_gid)
        tmp.replace(path)
        return path

    def write_node_conf(self, role: str, extra: dict[str, str] | None = None) -> None:
        """Node-specific settings; `extra` carries recovery settings for a restore.

        The restore target also gets the isolation settings (fleet/pgconf.py), and every key set here is
        commented out of the postgresql.auto.conf it inherited, which would otherwise win.
        """
        datadir = self.layout.datadir(role)
        sockets = self.socket_dir(role)
        values = {"port": str(self.layout.port(role)), "unix_socket_directories": str(sockets),
                  "cluster_name": f"pitrsite_{role}", "listen_addresses": settings.PITR_HOST,
                  **(pgconf.isolation(datadir) if self.restored(role) else {}), **(extra or {})}
        self.put_file(role, pgconf.NODE_CONF, pgconf.render(values, f"the {role} node"))
        if not self.restored(role):
            return
        conf, auto = datadir / "postgresql.conf", datadir / "postgresql.auto.conf"
        ours = set(values) | pgconf.RECOVERY_ONLY
        text = pgconf.without_keys(conf.read_text(), ours) if conf.exists() else ""
        self.put_file(role, "postgresql.conf", pgconf.including_node_conf(text))
        if auto.exists():
            self.put_file(role, "postgresql.auto.conf", pgconf.without_keys(auto.read_text(), ours))
        hba = datadir / "pg_hba.conf"
        original = hba.read_text() if hba.exists() else pgconf.LOCAL_HBA
        self.put_file(role, "pg_hba.conf", pgconf.with_self_login(original))

    def restored(self, role: str) -> bool:
        """A node whose data directory is a restored copy: isolated from its original, with its own socket."""
        return role == "restore_target"

    def socket_dir(self, role: str) -> Path:
        """Where a node listens on a Unix socket: a restored copy in its own 0700 directory, so the trust
        line pitrsite writes into the copy's pg_hba.conf is reachable by the server account and root only."""
        return self.private_socket(role) if self.restored(role) else self.layout.run

    def private_socket(self, role: str) -> Path:
        path = self.layout.datadir(role).parent / "socket"
        pg.give_to_server(path)
        path.chmod(0o700)
        return path

    def connect_own(self, role: str, user: str, timeout: int = 5) -> psycopg.Connection:
        """pitrsite's own login to the restored copy, through its private socket: no password of the original's."""
        return psycopg.connect(host=str(self.socket_dir(role)), port=self.layout.port(role), user=user,
                               dbname="postgres", autocommit=True, connect_timeout=timeout)

    # --- the home, the capturer and the restore target ---------------------------
    def _check_home(self) -> None:
        home = self.layout.home
        try:
            home.mkdir(parents=True, exist_ok=True)
            probe = home / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise FleetError(f"data home {home} is not writable ({exc.strerror}): "
                             f"fix its permissions or set PITR_HOME") from None
        account = pg.server_account()
        if account is not None:
            # The server account must be able to walk down to its data directories.
            for parent in [home, *home.parents]:
                if parent.stat().st_mode & 0o005 != 0o005 and parent.stat().st_uid != account.pw_uid:
                    raise FleetError(f"{parent} is not searchable by OS user {account.pw_name}: "
                                     f"chmod o+rx {parent} or set PITR_HOME elsewhere")
        pg.give_to_server(home, self.layout.logs, self.layout.run, self.layout.archive, self.layout.backups,
                          self.layout.staging, self.layout.secrets)
        os.chmod(self.layout.secrets, 0o700)

    @property
    def standby_slot(self) -> str:
        """The standby's own slot on the primary (made with the primary's objects)."""
        return settings.PITR_STANDBY_SLOT

    def replication_source(self) -> tuple[list[str], dict]:
        """How a client tool reaches the primary for replication: pg_basebackup's and pg_receivewal's
        connection arguments, and their environment (the fleet's passfile)."""
        return (["-h", settings.PITR_HOST, "-p", str(self.layout.port("primary")), "-U", settings.PITR_REPL_USER,
                 "--no-password"], pg.libpq_env())

    def _ensure_capturer(self) -> str:
        if procs.alive(procs.read_pid(self.layout.run / "capturer.supervisor.pid")):
            return "capturer already running"
        pg.give_to_server(self.layout.archive)
        argv = [pg.tool("pg_receivewal"), "-h", settings.PITR_HOST, "-p", str(self.layout.port("primary")),
                "-U", settings.PITR_REPL_USER, "--no-password", "-D", str(self.layout.archive),
                f"--slot={settings.PITR_CAPTURE_SLOT}", "--synchronous", "--verbose"]
        account = pg.server_account()
        runner.start_supervised("capturer", argv, self.layout.run, self.layout.logfile("capturer"),
                               user=account.pw_name if account else None, env=pg.libpq_env(),
                               wal_archive=self.layout.archive)
        if not procs.alive(self.pid("capturer")):
            raise FleetError(f"capturer did not start: see {self.layout.logfile('capturer')}")
        return f"capturer streaming into {self.layout.archive} through slot {settings.PITR_CAPTURE_SLOT}"

    def prepare_restore_target(self) -> None:
        """What a restore needs of this home, made when missing: a restore-only home (a new machine with the
        storage settings and a catalog rebuilt from storage) gets a restore target without any primary."""
        pg.give_to_server(self.layout.home, self.layout.logs, self.layout.run, self.layout.staging)
        self._ensure_restore_target()

    def _ensure_restore_target(self) -> str:
        datadir = self.layout.datadir("restore_target")
        pg.give_to_server(datadir.parent, datadir)
        os.chmod(datadir, 0o700)
        return f"restore target reserved at {datadir} (port {self.layout.port('restore_target')})"

    def _running_pid(self, role: str) -> int:
        pid = self.pid(role)
        if not procs.alive(pid):
            raise FleetError(f"{role} is not running: run `python manage.py fleet start {role}`")
        return pid

    def check_port_ours(self, role: str) -> None:
        """Before touching a role: its port is free, or held by this role's own server."""
        if self.state(role) != "stopped" and self._pid_file_port(role) == self.layout.port(role):
            return
        self._check_port_free(role)

    def _pid_file_port(self, role: str) -> int | None:
        # postmaster.pid, line 4: the port the server listens on.
        try:
            return int((self.layout.datadir(role) / "postmaster.pid").read_text().splitlines()[3])
        except (OSError, IndexError, ValueError):
            return None

    def _check_port_free(self, role: str) -> None:
        port = self.layout.port(role)
        if procs.port_in_use(settings.PITR_HOST, port):
            setting = {"primary": "PITR_PRIMARY_PORT", "standby": "PITR_STANDBY_PORT",
                       "restore_target": "PITR_RESTORE_PORT"}[role]
            raise FleetError(f"port {port} for the {role} is already in use by another process: "
                             f"stop it or set {setting} to a free port")



__all__ = ["LocalDriver", "ROLES", "SERVER_ROLES"]
