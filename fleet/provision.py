"""Making the demo fleet's servers from nothing: the primary (initdb, settings, roles, database, slots, the
test table) and its hot standby (a pg_basebackup clone), idempotently.

The local and docker drivers share it: both keep the data directories under the home, and the driver passed
in starts each server its own way (pg_ctl or a container). Running a role is the driver's (fleet/local.py).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from fleet import capture, pg
from pitrsite.config import persistent_secret

if TYPE_CHECKING:
    from fleet.local import LocalDriver

# Shared by every node; the base backup carries it to the standby and the restore target.
CLUSTER_CONF = """\
# Written by pitrsite. Node-specific settings live in pitrsite.node.conf.
listen_addresses = '127.0.0.1'
wal_level = replica
track_commit_timestamp = on
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
hot_standby_feedback = on
wal_log_hints = on
max_connections = 100
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
"""

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS test_data (
    id bigserial PRIMARY KEY,
    payload text NOT NULL,
    -- statement time of the inserting transaction; it is never later than the commit time
    created_at timestamptz NOT NULL DEFAULT now(),
    writer integer,
    seq integer,
    UNIQUE (writer, seq)
)
"""


def write_secrets(driver: LocalDriver) -> Path:
    """Generate the superuser and replication passwords once; keep them in a pgpass file."""
    secrets = driver.layout.secrets
    superuser_pw = persistent_secret(secrets / "superuser_password", 18)
    repl_pw = persistent_secret(secrets / "replication_password", 18)
    passfile = pg.passfile()
    passfile.write_text(
        f"{settings.PITR_HOST}:*:*:{settings.PITR_PG_SUPERUSER}:{superuser_pw}\n"
        f"{settings.PITR_HOST}:*:*:{settings.PITR_REPL_USER}:{repl_pw}\n"
    )
    account = pg.server_account()
    for path in (passfile, secrets / "superuser_password", secrets / "replication_password"):
        os.chmod(path, 0o600)
        if account is not None:
            os.chown(path, account.pw_uid, account.pw_gid)
    return secrets / "superuser_password"


def primary(driver: LocalDriver) -> str:
    """The primary, created when its data directory is empty, then started and given its objects."""
    datadir = driver.layout.datadir("primary")
    pwfile = write_secrets(driver)
    created = ""
    if not (datadir / "PG_VERSION").exists():
        pg.give_to_server(datadir.parent)
        pg.run([pg.tool("initdb"), "-D", str(datadir), "-U", settings.PITR_PG_SUPERUSER, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--data-checksums", "-E", "UTF8", "--locale=C",
                f"--wal-segsize={settings.PITR_WAL_SEGSIZE_MB}"], step="initialising the primary (initdb)")
        driver.put_file("primary", "pitrsite.conf", CLUSTER_CONF)
        conf = (datadir / "postgresql.conf").read_text()
        driver.put_file("primary", "postgresql.conf",
                        conf + "\ninclude_if_exists = 'pitrsite.conf'\ninclude_if_exists = 'pitrsite.node.conf'\n")
        created = "primary created; "
    driver.start("primary")
    primary_objects(driver)
    return f"{created}primary running on {settings.PITR_HOST}:{driver.layout.port('primary')}"


def primary_objects(driver: LocalDriver) -> None:
    """The replication role, the demo database, both slots and the test table (each only when missing)."""
    repl_pw = pg.password(settings.PITR_REPL_USER)
    with pg.connect(driver.layout.port("primary"), dbname="postgres") as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [settings.PITR_REPL_USER]).fetchone():
            conn.execute(f'CREATE ROLE "{settings.PITR_REPL_USER}" WITH LOGIN REPLICATION')
        # ALTER ROLE ... PASSWORD takes no bind parameters; quote with the server's own function.
        quoted = pg.fetch_row(conn.execute("SELECT quote_literal(%s)", [repl_pw]))[0]
        conn.execute(f'ALTER ROLE "{settings.PITR_REPL_USER}" WITH PASSWORD {quoted}')
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [settings.PITR_DBNAME]).fetchone():
            conn.execute(f'CREATE DATABASE "{settings.PITR_DBNAME}"')
        capture.ensure_slot(conn, settings.PITR_CAPTURE_SLOT, driver.layout.archive)
        pg.ensure_slot(conn, settings.PITR_STANDBY_SLOT)
    with pg.connect(driver.layout.port("primary")) as conn:
        conn.execute(SCHEMA_SQL)


def standby(driver: LocalDriver) -> str:
    """The hot standby, cloned from the primary through its own slot when missing, then started (-R: it streams
    from the primary through the same slot)."""
    datadir = driver.layout.datadir("standby")
    created = ""
    if not (datadir / "PG_VERSION").exists():
        pg.give_to_server(datadir.parent)
        source, env = driver.replication_source()  # a promoted server's: its private socket, its superuser
        pg.run([pg.tool("pg_basebackup"), *source, "-D", str(datadir), "-R", f"--slot={driver.standby_slot}",
                "-X", "stream", "--checkpoint=fast"],
               # as long as the copy takes
               step="cloning the standby (pg_basebackup)", env=env, timeout=None)
        created = "standby created; "
    driver.start("standby")
    return f"{created}standby running on {settings.PITR_HOST}:{driver.layout.port('standby')}"
