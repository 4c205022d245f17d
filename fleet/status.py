"""What the fleet is doing: process states, replication, slots, capture lag."""
from __future__ import annotations

import json

import psycopg
from django.conf import settings

from fleet import pg
from fleet.layout import ROLES, SERVER_ROLES
from fleet.local import LocalDriver, get_driver
from pitrsite.errors import FleetError

REPLICATION_SQL = """
SELECT application_name, state, sent_lsn::text, write_lsn::text, flush_lsn::text, replay_lsn::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint AS lag_bytes,
       extract(epoch FROM coalesce(flush_lag, '0'))::float AS lag_seconds
FROM pg_stat_replication
"""
SLOTS_SQL = """
SELECT slot_name, active, active_pid, restart_lsn::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes
FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY slot_name
"""


def fleet_status(driver: LocalDriver | None = None) -> dict:
    driver = driver or get_driver()
    roles = {}
    for role in ROLES:
        entry = {"state": driver.state(role), "pid": driver.pid(role) if driver.state(role) != "stopped" else None}
        if role in SERVER_ROLES:
            entry["port"] = driver.layout.port(role)
        roles[role] = entry
    capturer_state = driver.layout.run / "capturer.state.json"
    if capturer_state.exists():
        roles["capturer"]["restarts"] = json.loads(capturer_state.read_text()).get("restarts", 0)
    result = {"driver": driver.name, "home": str(driver.layout.home), "roles": roles,
              "replication": [], "slots": [], "primary_lsn": None, "capturer": None, "errors": []}
    if roles["primary"]["state"] != "running":
        result["errors"].append(f"primary is {roles['primary']['state']}: replication state unknown")
        return result
    try:
        with pg.connect(driver.layout.port("primary"), dbname="postgres", timeout=3,
                        options="-c statement_timeout=3000") as conn:
            result["primary_lsn"] = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            cur = conn.cursor(row_factory=psycopg.rows.dict_row)
            result["replication"] = cur.execute(REPLICATION_SQL).fetchall()
            result["slots"] = cur.execute(SLOTS_SQL).fetchall()
    except (FleetError, psycopg.Error) as exc:
        result["errors"].append(str(exc).splitlines()[0])
        return result
    receiver = next((r for r in result["replication"] if r["application_name"] == "pg_receivewal"), None)
    slot = next((s for s in result["slots"] if s["slot_name"] == settings.PITR_CAPTURE_SLOT), None)
    result["capturer"] = {
        "streaming": receiver is not None,
        "flush_lsn": receiver["flush_lsn"] if receiver else None,
        "lag_bytes": receiver["lag_bytes"] if receiver else (slot["retained_bytes"] if slot else None),
        "lag_seconds": receiver["lag_seconds"] if receiver else None,
    }
    standby = next((r for r in result["replication"] if r["application_name"] == "pitrsite_standby"), None)
    roles["standby"]["replication"] = standby["state"] if standby else "not streaming"
    return result


def fleet_check(driver: LocalDriver | None = None) -> list[str]:
    """The seed's start-up checks; returns problems, each saying what to run."""
    driver = driver or get_driver()
    problems = []
    for path in (driver.layout.home, driver.layout.archive, driver.layout.backups):
        if not path.is_dir():
            problems.append(f"{path} is missing: run `python manage.py fleet up`")
    status = fleet_status(driver)
    for role in ("primary", "standby", "capturer"):
        if status["roles"][role]["state"] != "running":
            problems.append(f"{role} is {status['roles'][role]['state']}: run `python manage.py fleet up`")
    if status["roles"]["primary"]["state"] == "running":
        try:
            with pg.connect(driver.layout.port("primary"), timeout=3) as conn:
                if conn.execute("SELECT to_regclass('public.test_data')").fetchone()[0] is None:
                    problems.append("table test_data is missing on the primary: run `python manage.py fleet up`")
        except FleetError as exc:
            problems.append(str(exc))
        slots = {s["slot_name"]: s for s in status["slots"]}
        for name in (settings.PITR_CAPTURE_SLOT, settings.PITR_STANDBY_SLOT):
            if name not in slots:
                problems.append(f"replication slot {name} is missing: run `python manage.py fleet up`")
            elif not slots[name]["active"]:
                problems.append(f"replication slot {name} is not active: run `python manage.py fleet up`")
    return problems
