"""A PostgreSQL server the test makes itself, as a DBA's would be: not started by pitrsite.

A superuser not named postgres, a separate non-superuser replication role, scram passwords, 32 MiB WAL
segments, a tablespace, and the original's own archive_command and streaming settings (which a restored copy
must not keep).
"""
from __future__ import annotations

import os
import pwd
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg

PASSWORD = "s3cret:pw"
BIN = Path(os.environ.get("PITR_PG_BINDIR") or "/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class External:
    root: Path
    port: int
    passfile: Path
    superuser: str = "dba"
    repl: str = "repl_user"
    dbname: str = "app"

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def tablespace(self) -> Path:
        return self.root / "tablespace"

    @property
    def own_archive(self) -> Path:
        return self.root / "own_archive"

    def connect(self, dbname: str | None = None, port: int | None = None) -> psycopg.Connection:
        """The original through its passfile; a restored copy (another port) with the password it inherited."""
        secret = {"passfile": str(self.passfile)} if port in (None, self.port) else {"password": PASSWORD}
        return psycopg.connect(host="127.0.0.1", port=port or self.port, user=self.superuser,
                               dbname=dbname or self.dbname, autocommit=True, **secret)

    def pg_ctl(self, *args: str) -> None:
        as_postgres(["pg_ctl", "-D", str(self.datadir), "-l", str(self.root / "server.log"), "-w", "-s", *args])

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            self.pg_ctl("-m", "immediate", "stop")


def as_postgres(argv: list[str]) -> subprocess.CompletedProcess:
    account = pwd.getpwnam("postgres")
    kwargs = {"user": account.pw_uid, "group": account.pw_gid} if os.geteuid() == 0 else {}
    result = subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, cwd="/", **kwargs)
    if result.returncode != 0:
        raise AssertionError(f"{argv[0]} failed: {result.stderr or result.stdout}")
    return result


def give(path: Path) -> None:
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(path, account.pw_uid, account.pw_gid)


def make_external(root: Path, conf: str = "") -> External:
    """initdb, configure, start; returns the running server (the caller stops it)."""
    root.mkdir(parents=True)
    os.chmod(root, 0o755)
    give(root)
    ext = External(root, free_port(), root / "pgpass")
    raw_pw, repl_pw = PASSWORD, "r3pl"  # a colon, escaped in the passfile as libpq reads it
    pwfile = root / "pw"
    pwfile.write_text(raw_pw + "\n")
    give(pwfile)
    ext.passfile.write_text(f"127.0.0.1:{ext.port}:*:{ext.superuser}:s3cret\\:pw\n"
                            f"127.0.0.1:{ext.port}:*:{ext.repl}:{repl_pw}\n")
    os.chmod(ext.passfile, 0o600)
    give(ext.passfile)
    for path in (ext.tablespace, ext.own_archive):
        path.mkdir()
        give(path)
    as_postgres(["initdb", "-D", str(ext.datadir), "-U", ext.superuser, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                 "--wal-segsize=32", "-E", "UTF8", "--locale=C"])
    (ext.datadir / "postgresql.conf").open("a").write(
        f"\nport = {ext.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
        "wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\ntrack_commit_timestamp = on\n"
        "max_wal_size = '3GB'\ncheckpoint_timeout = '7min'\n"  # replay overrides them; the copy keeps them
        "recovery_min_apply_delay = '1h'\nrecovery_end_command = 'false'\n"  # a copy must never use these
        f"archive_mode = on\narchive_command = 'cp %p {ext.own_archive}/%f'\n{conf}")
    ext.pg_ctl("start")
    with psycopg.connect(host="127.0.0.1", port=ext.port, user=ext.superuser, password=raw_pw, dbname="postgres",
                         autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {ext.repl} LOGIN REPLICATION PASSWORD '{repl_pw}'")
        conn.execute(f"CREATE DATABASE {ext.dbname}")
        conn.execute(f"CREATE TABLESPACE outside LOCATION '{ext.tablespace}'")
        # Settings a restored copy would otherwise inherit through postgresql.auto.conf.
        conn.execute(f"ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={ext.port} user={ext.repl}'")
        conn.execute("ALTER SYSTEM SET primary_slot_name = 'not_for_copies'")
        conn.execute("SELECT pg_reload_conf()")
    with ext.connect() as conn:
        conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, payload text NOT NULL)")
        conn.execute("CREATE TABLE far (id bigserial PRIMARY KEY, payload text NOT NULL) TABLESPACE outside")
    return ext
