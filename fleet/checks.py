"""What capture needs of a server, checked before `server add` creates anything and by `server check`.

Each check is one line saying what was found and, when it fails, what to change. `server add` stops at the
first failure (one line, nothing created); `server check` runs them all.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import psycopg

from fleet import pg, servers
from fleet.layout import Layout
from fleet.models import Server
from pitrsite import procs
from pitrsite.errors import FleetError, first_line

# A base backup streams its WAL through a second walsender beside its own; capture holds one more.
SENDERS_NEEDED = 3


@dataclass
class Check:
    name: str
    ok: bool
    line: str

    def as_dict(self) -> dict:
        return {"check": self.name, "ok": self.ok, "line": self.line}


def local_major() -> int:
    out = pg.run([pg.tool("pg_ctl"), "--version"], step="reading the local PostgreSQL version", as_server=False)
    match = re.search(r"(\d+)", out.stdout)
    return int(match[1]) if match else 0


def run_checks(server: Server, stop_at_failure: bool = False, slot_owner_running: bool = False) -> list[Check]:
    """Every check in order; the slot is looked at, never created, here."""
    from fleet.external import ExternalDriver  # external imports this module lazily too

    driver = ExternalDriver(server)
    c = driver.c
    found: list[Check] = []

    def add(name: str, ok: bool, line: str) -> bool:
        found.append(Check(name, ok, line))
        return ok or not stop_at_failure

    archive = Layout.of(server).archive
    if not server.pk and archive.is_dir() and any(archive.iterdir()):
        # WAL of another cluster under the same name: pg_receivewal would continue from it, mixing the two.
        add("archive", False, f"{archive} holds WAL of an earlier server named {server.name}: move it aside "
                              "(`upload` copied it to storage if it was protected) or choose another name")
        return found
    if c.passfile and not _server_account_reads(c.passfile):
        account = pg.server_account()
        add("passfile", False, f"passfile {c.passfile} is missing or not readable by the server account "
                               "(libpq wants it owned by the user running pg_receivewal, mode 0600): "
                               f"chown {account.pw_name if account else 'USER'} "
                               f"{c.passfile} && chmod 600 {c.passfile}")
        return found
    try:
        conn = driver.connect(dbname=c.dbname, timeout=5)
    except FleetError as exc:
        add("reachable", False, f"{exc}: check --host/--port/--user and the password in the passfile")
        return found
    with conn:
        version = int(pg.fetch_row(conn.execute("SELECT current_setting('server_version_num')"))[0])
        if not add("reachable", True, f"reachable: PostgreSQL {version // 10000} on {c.host}:{c.port} as {c.user}"):
            return found
        settings_: dict[str, str] = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', 'max_wal_senders', "
            "'max_replication_slots', 'track_commit_timestamp', 'wal_segment_size')").fetchall())
        level = settings_.get("wal_level")
        if not add("wal_level", level in ("replica", "logical"),
                   f"wal_level is {level}" + ("" if level in ("replica", "logical") else
                                              ": set wal_level = replica and restart the server")):
            return found
        senders = int(settings_["max_wal_senders"])
        used = int(pg.fetch_row(conn.execute("SELECT count(*) FROM pg_stat_replication"))[0])
        if not add("max_wal_senders", senders - used >= SENDERS_NEEDED,
                   f"max_wal_senders {senders}, {used} in use" + ("" if senders - used >= SENDERS_NEEDED else
                   f": capture and a backup need {SENDERS_NEEDED} free; raise max_wal_senders and restart")):
            return found
        slots = int(settings_["max_replication_slots"])
        slot_rows = conn.execute("SELECT slot_name, active FROM pg_replication_slots").fetchall()
        ours = next((row for row in slot_rows if row[0] == c.slot), None)
        free_ok = ours is not None or slots - len(slot_rows) >= 1
        if not add("max_replication_slots", free_ok,
                   f"max_replication_slots {slots}, {len(slot_rows)} in use" + ("" if free_ok else
                   f": slot {c.slot} needs one free; raise max_replication_slots and restart")):
            return found
        if not add("replication", *_replication_privilege(driver)):
            return found
        major = local_major()
        if not add("version", version // 10000 == major,
                   f"server major version {version // 10000}, local binaries {major}" +
                   ("" if version // 10000 == major else
                    f": install PostgreSQL {version // 10000} here and set PITR_PG_BINDIR")):
            return found
        tct = settings_.get("track_commit_timestamp")
        add("track_commit_timestamp", True, f"track_commit_timestamp is {tct}" + (
            "" if tct == "on" else ": fine (commit times come from the WAL); only --target-xid cannot say when "
                                   "a transaction committed"))
        if ours is None:
            add("slot", True, f"slot {c.slot} is missing: it will be created")
        elif ours[1] and not slot_owner_running:
            add("slot", False, f"slot {c.slot} is held by another client: stop it, or choose another slot "
                               "with --slot")
        else:
            add("slot", True, f"slot {c.slot} exists and is " + ("used by our capturer" if ours[1] else
                                                                 "inactive: it will be reused"))
    return found


def check_server(server: Server) -> list[Check]:
    """`server check` and the admin's check: what capture needs (an external server's), then capture's own
    health (slot missing, inactive or retaining too much WAL), each one line saying what to do."""
    from fleet.driver import get_driver
    from fleet.status import capture_problem, fleet_check, fleet_status, standby_problem

    with servers.using(server):
        if server.managed:
            problems = fleet_check(get_driver(server))
            return [Check("fleet", False, p) for p in problems] or [Check("fleet", True, "fleet OK")]
        found = run_checks(server, slot_owner_running=capturer_running(server))
        if any(check.name == "reachable" and check.ok for check in found):  # else capture is unknown
            driver = get_driver(server)
            status = fleet_status(driver)
            problem = capture_problem(status)
            found.append(Check("capture", problem is None, problem or "capture streaming"))
            if "standby" in driver.roles:  # a promoted server's, once asked for
                problem = standby_problem(status, driver)
                found.append(Check("standby", problem is None, problem or
                                   f"standby streaming on port {driver.layout.port('standby')} through slot "
                                   f"{driver.standby_slot}"))
    return found


def refuse_new_cluster(server: Server) -> None:
    """`fleet up` never initialises a new primary over a cluster the catalog knows (a restore-only home, or one
    whose primary was lost): the new cluster's WAL would be refused, and the lost one is what a restore brings
    back. pgBackRest and Barman refuse the same (another system identifier in the stanza, the server)."""
    primary = Layout.of(server).datadir("primary")
    if not server.managed or not server.system_identifier or (primary / "PG_VERSION").exists():
        return
    raise FleetError(f"server {server.name} holds the history of cluster {server.pg_major}-"
                     f"{server.system_identifier} and this home has no primary ({primary}): `fleet up` would "
                     "initialise a new cluster, whose WAL is refused. Bring the lost one back with `python manage.py "
                     "restore --target-time T --as-new-primary NAME --port P --restore-port R`; start a new cluster "
                     "in a new PITR_HOME (the same storage keeps the two apart)")


def _server_account_reads(path: str) -> bool:
    account = pg.server_account()
    try:
        st = os.stat(path)
    except OSError:
        return False
    return account is None or st.st_uid == account.pw_uid


def _replication_privilege(driver) -> tuple[bool, str]:
    c = driver.c
    secret = {"passfile": c.passfile} if c.passfile else {}
    try:
        with psycopg.connect(host=c.host, port=c.port, user=c.replication_user, dbname=c.dbname,
                             replication="true", connect_timeout=5, autocommit=True, **secret):
            pass
    except psycopg.OperationalError as exc:
        return False, (f"replication connection as {c.replication_user} refused ({first_line(exc)}): "
                       f"ALTER ROLE {c.replication_user} REPLICATION, and a 'replication' line in pg_hba.conf")
    return True, f"replication connection as {c.replication_user} works"


def capturer_running(server: Server) -> bool:
    from fleet.layout import Layout

    return procs.alive(procs.read_pid(Layout.of(server).run / "capturer.pid"))


__all__ = ["Check", "run_checks", "capturer_running", "servers"]
