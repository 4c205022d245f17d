"""The four restorers bench/peers.py compares: bare PostgreSQL tools, pgBackRest, Barman and pitrsite.

Each one has setup (untimed), backup() and restore(target, datadir, port) (timed by the caller). A peer's
restore writes into an empty directory and starts the server on its own free port; the caller polls for
promotion the same way for all of them. The peers run as the server account, as they would in production.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

from common import PROJECT

BENCH_VENV = PROJECT / ".cache" / "bench-venv"
BENCH_REQUIREMENTS = ["barman==3.19.1", "psycopg2-binary==2.9.13", "matplotlib==3.11.2"]


def ensure_bench_venv() -> Path:
    """Barman and matplotlib live in their own virtualenv: requirements.txt stays the application's."""
    python = BENCH_VENV / "bin" / "python"
    if not (BENCH_VENV / "bin" / "barman").exists():
        # Debian's Python: the server account runs Barman, and it cannot reach a Python under /root.
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *BENCH_REQUIREMENTS], check=True)
    for tool in ("pgbackrest", "rsync"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install -y {tool}")
    return python


def write_passfile(home: Path) -> Path:
    """The fleet's passwords for any host: pgBackRest reaches the primary through its Unix socket."""
    from fleet import pg

    lines = [f"*:*:*:{parts[3]}:{parts[4]}" for parts in
             (line.split(":") for line in pg.passfile().read_text().splitlines()) if len(parts) == 5]
    path = home / "pgpass-any-host"
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    own(path)
    os.environ["PITR_PEERS_PGPASSFILE"] = str(path)
    return path


def server_run(argv: list[str], what: str, env: dict | None = None, timeout: float = 3600) -> str:
    """A tool run as the server account; a failure stops the benchmark with the tool's own words."""
    from fleet import pg
    from pitrsite import runner

    full_env = {**pg.libpq_env(), **(env or {})}
    full_env["PGPASSFILE"] = os.environ.get("PITR_PEERS_PGPASSFILE", full_env["PGPASSFILE"])
    result = runner.run(argv, step=what, as_server=True, env=full_env, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {(result.stderr or result.stdout).strip()[-2000:]}")
    return result.stdout


def own(*paths: Path) -> None:
    """Hand files we wrote to the server account."""
    from fleet import pg

    account = pg.server_account()
    for path in paths:
        if account is not None:
            os.chown(path, account.pw_uid, account.pw_gid)


def start_copy(datadir: Path, port: int, run_dir: Path, log: Path) -> None:
    """Start a restored copy on its own port; it must not archive into anyone's repository."""
    from fleet import pg

    server_run([pg.tool("pg_ctl"), "-D", str(datadir), "-l", str(log), "-W", "-s", "-o",
                f"-p {port} -c unix_socket_directories={run_dir} -c archive_mode=off -c cluster_name=peer{port}",
                "start"], "pg_ctl start")


def stop_copy(datadir: Path) -> None:
    from fleet import pg
    from pitrsite import runner

    if (datadir / "postmaster.pid").exists():
        runner.run([pg.tool("pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "-s", "stop"],
                   step="pg_ctl stop", as_server=True, check=False)


def pg_time(moment: datetime) -> str:
    return moment.isoformat(sep=" ")


class Bare:
    """pg_basebackup -Ft zstd, tar -x, recovery.signal, a cp restore_command from pitrsite's WAL archive."""

    name = "bare tools"

    def __init__(self, home: Path, driver):
        self.home, self.driver = home / "bare", driver
        self.latest: Path | None = None
        self.count = 0

    def setup(self) -> None:
        from fleet import pg

        pg.give_to_server(self.home)

    def backup(self) -> None:
        from django.conf import settings

        from fleet import pg

        self.count += 1
        dest = self.home / f"backup-{self.count}"
        server_run([pg.tool("pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.driver.layout.port("primary")),
                    "-U", settings.PITR_REPL_USER, "--no-password", "-D", str(dest), "-Ft", "-Xstream",
                    "--checkpoint=fast", "--compress=client-zstd"], "pg_basebackup")
        if self.latest is not None:
            shutil.rmtree(self.latest)  # only the newest is restored
        self.latest = dest

    def restore(self, target: datetime, datadir: Path, port: int) -> None:
        from fleet import pg

        assert self.latest is not None
        pg.give_to_server(datadir / "pg_wal")
        os.chmod(datadir, 0o700)
        for stem, into in (("base", datadir), ("pg_wal", datadir / "pg_wal")):
            archive = next(self.latest.glob(f"{stem}.tar*"))
            server_run(["tar", *(["--zstd"] if archive.suffix == ".zst" else []), "-x", "-f", str(archive),
                        "-C", str(into)], "tar -x")
        (datadir / "recovery.signal").touch()
        with open(datadir / "postgresql.auto.conf", "a") as fh:
            fh.write(f"restore_command = 'cp \"{self.driver.layout.archive}/%f\" \"%p\"'\n"
                     f"recovery_target_time = '{pg_time(target)}'\nrecovery_target_action = 'promote'\n")
        own(datadir / "recovery.signal", datadir / "postgresql.auto.conf")
        start_copy(datadir, port, self.driver.layout.run, self.home / f"restore-{port}.log")


class PgBackRest:
    """pgBackRest from Debian's package: archive-push from the primary, full backups, restore --type=time."""

    name = "pgBackRest"
    process_max = 2

    def __init__(self, home: Path, driver):
        self.home, self.driver = home / "pgbackrest", driver
        self.conf = self.home / "pgbackrest.conf"

    def setup(self) -> None:
        from django.conf import settings

        from fleet import pg

        pg.give_to_server(self.home, self.home / "repo", self.home / "log", self.home / "lock", self.home / "spool")
        self.conf.write_text(
            "[global]\n"
            f"repo1-path={self.home / 'repo'}\nlog-path={self.home / 'log'}\nlock-path={self.home / 'lock'}\n"
            f"spool-path={self.home / 'spool'}\nprocess-max={self.process_max}\nrepo1-retention-full=2\n"
            "start-fast=y\nlog-level-console=warn\nlog-level-file=info\n"
            "[bench]\n"
            f"pg1-path={self.driver.layout.datadir('primary')}\npg1-port={self.driver.layout.port('primary')}\n"
            f"pg1-socket-path={self.driver.layout.run}\npg1-user={settings.PITR_PG_SUPERUSER}\n")
        own(self.conf)

    def command(self, *args: str) -> list[str]:
        return ["pgbackrest", f"--config={self.conf}", "--stanza=bench", *args]

    def archive_command(self) -> str:
        return " ".join(self.command("archive-push", '"%p"'))

    def after_archiving(self) -> None:
        server_run(self.command("stanza-create"), "pgbackrest stanza-create")
        server_run(self.command("check"), "pgbackrest check")

    def backup(self) -> None:
        server_run(self.command("--type=full", "backup"), "pgbackrest backup")

    def restore(self, target: datetime, datadir: Path, port: int) -> None:
        os.chmod(datadir, 0o700)
        server_run(self.command(f"--pg1-path={datadir}", "--type=time", f"--target={pg_time(target)}",
                                "--target-action=promote", "--archive-mode=off", "restore"), "pgbackrest restore")
        start_copy(datadir, port, self.driver.layout.run, self.home / f"restore-{port}.log")

    def version(self) -> str:
        return subprocess.run(["pgbackrest", "version"], capture_output=True, text=True).stdout.strip()


class Barman:
    """Barman from PyPI: backup_method=postgres (pg_basebackup, plain), WAL through its incoming directory."""

    name = "Barman"

    def __init__(self, home: Path, driver, python: Path):
        self.home, self.driver = home / "barman", driver
        self.bin = python.parent / "barman"
        self.conf = self.home / "barman.conf"
        self.incoming = self.home / "bench" / "incoming"

    def setup(self) -> None:
        from django.conf import settings

        from fleet import pg

        pg.give_to_server(self.home, self.home / "bench", self.incoming)
        port = self.driver.layout.port("primary")
        self.conf.write_text(
            "[barman]\n"
            f"barman_home = {self.home}\nbarman_user = postgres\nlog_file = {self.home / 'barman.log'}\n"
            "log_level = INFO\nminimum_redundancy = 0\n"
            "[bench]\n"
            f"conninfo = host=127.0.0.1 port={port} user={settings.PITR_PG_SUPERUSER} dbname=postgres\n"
            f"streaming_conninfo = host=127.0.0.1 port={port} user={settings.PITR_REPL_USER}\n"
            f"backup_method = postgres\narchiver = on\nstreaming_archiver = off\n"
            f"incoming_wals_directory = {self.incoming}\n"
            f"path_prefix = {Path(pg.tool('pg_basebackup')).parent}\n")
        own(self.conf)

    def command(self, *args: str) -> list[str]:
        return [str(self.bin), "-q", "-c", str(self.conf), *args]

    def archive_command(self) -> str:
        return f'cp "%p" "{self.incoming}/%f"'

    def after_archiving(self) -> None:
        self.archive_wal()

    def archive_wal(self) -> None:
        server_run(self.command("archive-wal", "bench"), "barman archive-wal")

    def backup(self) -> None:
        server_run(self.command("backup", "bench"), "barman backup")

    def restore(self, target: datetime, datadir: Path, port: int) -> None:
        os.chmod(datadir, 0o700)
        server_run(self.command("recover", "--target-time", pg_time(target), "--target-action", "promote",
                                "bench", "latest", str(datadir)), "barman recover")
        start_copy(datadir, port, self.driver.layout.run, self.home / f"restore-{port}.log")

    def version(self) -> str:
        return subprocess.run([str(self.bin), "-v"], capture_output=True, text=True).stdout.strip().splitlines()[0]


class Pitrsite:
    """`scripts/pitr backup` and `scripts/pitr restore --target-time T` as a user runs them: the client hands each
    to the web service and the Celery worker (started here, in the bench's home, as `scripts/pitr up` does)."""

    name = "pitrsite"

    def __init__(self, home: Path, driver):
        self.driver = driver
        self.last_job: dict = {}
        self.started_wall = 0.0
        self.backup_runs: list[dict] = []

    def setup(self) -> None:
        from fleet import services

        # Bytecode compiled once, as an installed package has it: with PYTHONDONTWRITEBYTECODE set (as on this
        # machine) the services (and manage.py) would otherwise compile the project's modules again.
        packages = ["pitrsite", "fleet", "walcatalog", "restores", "chaos", "dashboard"]
        subprocess.run([str(PROJECT / ".venv" / "bin" / "python"), "-m", "compileall", "-q",
                        *(str(PROJECT / p) for p in packages)], check=True, stdout=subprocess.DEVNULL)
        try:
            services.up()  # Redis, web, worker, beat (no pgAdmin: bench/common.py), and the API token
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        from fleet import services

        services.down()

    def pitr(self, *args: str) -> str:
        result = subprocess.run([str(PROJECT / "scripts" / "pitr"), *args], capture_output=True, text=True,
                                cwd=PROJECT, timeout=3600)
        if result.returncode != 0:
            raise RuntimeError(f"scripts/pitr {args[0]} failed: {(result.stderr or result.stdout).strip()[-2000:]}")
        if "in this process" in result.stderr:  # the fallback would time manage.py, not the service
            raise RuntimeError(f"scripts/pitr {args[0]} did not reach the web service: {result.stderr.strip()}")
        return result.stdout

    def backup(self) -> None:
        started = time.time()
        job = json.loads(self.pitr("backup", "--json"))
        first = datetime.fromisoformat(job["steps"][0]["started_at"]).timestamp()
        finished = datetime.fromisoformat(job["finished_at"]).timestamp()
        self.backup_runs.append({"before_job_s": round(first - started, 3), "job_s": round(finished - first, 3),
                                 "steps": {s["name"]: s["seconds"] for s in job["steps"]}})

    def restore(self, target: datetime, datadir: Path, port: int) -> None:
        """Into its own restore target (its own directory and port); the job's steps are kept for the results."""
        self.started_wall = time.time()
        self.last_job = json.loads(self.pitr("restore", "--target-time", target.isoformat(), "--json"))
