"""What the fleet is doing: process states, replication, slots, capture lag."""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import psycopg
from django.conf import settings

from fleet import pg
from fleet.driver import FleetDriver, get_driver
from fleet.layout import SERVER_ROLES
from pitrsite.errors import FleetError, PitrError, first_line

REPLICATION_SQL = """
SELECT pid, application_name, state, sent_lsn::text, write_lsn::text, flush_lsn::text, replay_lsn::text,
       pg_wal_lsn_diff(pg_current_wal_lsn(), flush_lsn)::bigint AS lag_bytes,
       extract(epoch FROM coalesce(flush_lag, '0'))::float AS flush_lag_seconds,
       extract(epoch FROM now() - reply_time)::float AS reply_age_seconds
FROM pg_stat_replication
"""
OLDEST_WAL_SQL = "SELECT min(name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'"
# pg_receivewal's own complaints, as its log shows them ("pg_receivewal: error: ...").
RECEIVER_ERROR = re.compile(r"pg_receivewal: (?:error|fatal): (.*)$")
WAL_FILE = re.compile(r"^[0-9A-F]{24}(\.partial)?$")
LOG_TAIL = 64 << 10
SLOTS_SQL = """
SELECT slot_name, active, active_pid, restart_lsn::text, wal_status,
       pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained_bytes
FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY slot_name
"""


def fleet_status(driver: FleetDriver | None = None) -> dict:
    driver = driver or get_driver()
    roles: dict[str, dict[str, Any]] = {}
    for role in driver.roles:
        entry: dict[str, Any] = {"state": driver.state(role),
                                 "pid": driver.pid(role) if driver.state(role) != "stopped" else None}
        if role in SERVER_ROLES:
            entry["port"] = driver.layout.port(role)
        entry.update(driver.details(role))  # the docker driver's container id, image, state and health
        roles[role] = entry
    capturer_state = driver.layout.run / "capturer.state.json"
    if capturer_state.exists():
        roles["capturer"]["restarts"] = json.loads(capturer_state.read_text()).get("restarts", 0)
    result: dict[str, Any] = {"driver": driver.name, "home": str(driver.layout.home), "roles": roles,
              "replication": [], "slots": [], "primary_lsn": None, "capturer": None, "errors": [],
              "disk": disk_space(driver)}
    if roles["primary"]["state"] != "running":
        result["errors"].append(f"primary is {roles['primary']['state']}: replication state unknown")
        return result
    try:
        with driver.connect("primary", dbname="postgres", timeout=3, options="-c statement_timeout=3000") as conn:
            result["primary_lsn"] = pg.fetch_row(conn.execute("SELECT pg_current_wal_lsn()::text"))[0]
            cur = conn.cursor(row_factory=psycopg.rows.dict_row)
            result["replication"] = cur.execute(REPLICATION_SQL).fetchall()
            result["slots"] = cur.execute(SLOTS_SQL).fetchall()
            oldest_wal = pg.fetch_row(conn.execute(OLDEST_WAL_SQL))[0]
    except (FleetError, psycopg.Error) as exc:
        result["errors"].append(first_line(exc))
        return result
    result["capturer"] = capture_health(driver, roles["capturer"]["state"], result, oldest_wal)
    for name, disk in result["disk"].items():
        if disk["low"]:
            result["errors"].append(f"{name} filesystem {disk['path']} has {disk['free_percent']}% free "
                                    f"(below PITR_DISK_WARN_PERCENT={settings.PITR_DISK_WARN_PERCENT:g})")
    if "standby" in roles:
        standby = next((r for r in result["replication"] if r["application_name"] == "pitrsite_standby"), None)
        roles["standby"]["replication"] = standby["state"] if standby else "not streaming"
    return result


def capture_health(driver: FleetDriver, role_state: str, status: dict, oldest_wal: str | None) -> dict:
    """Is capture streaming? When not, why: from the slot, the walsender and the capturer's own log.

    `health` is streaming, paused, stopped, retrying (pg_receivewal restarts and fails: a full disk, a
    bad file in the archive) or broken (the slot or the WAL it needed is gone: a gap nothing can fill).
    Lag is honest: bytes the primary wrote that the archive does not hold, and seconds since the capturer
    last answered while it is behind or paused (0 when streaming and caught up).
    """
    # Ours is the walsender on our slot (an external server may stream to other pg_receivewal clients).
    slot_pid = next((s["active_pid"] for s in status["slots"] if s["slot_name"] == driver.slot), None)
    receiver = next((r for r in status["replication"] if r["application_name"] == "pg_receivewal"
                     and (slot_pid is None or r.get("pid") in (None, slot_pid))), None)
    slot = next((s for s in status["slots"] if s["slot_name"] == driver.slot), None)
    newest = newest_archived(driver.layout.archive)
    lag_bytes = receiver["lag_bytes"] if receiver else (slot["retained_bytes"] if slot else None)
    if receiver:
        # A paused capturer keeps its connection but receives nothing: whatever the primary writes now is
        # at risk, so its lag is the time since it last answered, even before the primary writes again.
        caught_up = not lag_bytes and role_state == "running"
        lag_seconds = 0.0 if caught_up else max(0.0, receiver["reply_age_seconds"] or 0.0)
    else:
        lag_seconds = archive_age(driver.layout.archive, newest)
    entry = {"streaming": bool(receiver) and role_state == "running", "health": "streaming", "reason": "",
             "last_error": None, "flush_lsn": receiver["flush_lsn"] if receiver else None,
             "lag_bytes": lag_bytes, "lag_seconds": lag_seconds, "newest_file": newest, "lost_after": None,
             "slot_active": slot["active"] if slot else None,
             "retained_bytes": slot["retained_bytes"] if slot else None, "alerts": slot_alerts(driver, slot)}
    last_error = receiver_error(driver.layout.logfile("capturer"))
    if slot is None or slot.get("wal_status") == "lost":
        what = "is missing on the primary" if slot is None else "was invalidated (max_slot_wal_keep_size)"
        entry.update(health="broken", lost_after=newest,
                     reason=f"replication slot {driver.slot} {what}: WAL after "
                            f"{newest or 'the archive'} is no longer kept for capture and, once recycled, is lost; a "
                            f"new base backup starts a new recoverable window (`{up_command(driver)}` makes a new "
                            "slot)")
    elif role_state != "running":
        start = up_command(driver) if getattr(driver, "server", None) else "python manage.py fleet start capturer"
        what = "paused (SIGSTOP): run `python manage.py fleet resume capturer`" if role_state == "paused" \
            else f"stopped: run `{start}`"
        entry.update(health=role_state if role_state in ("paused", "stopped") else "stopped",
                     reason=f"capturer is {what}")
    elif not receiver:
        removed = last_error and "has already been removed" in last_error
        entry.update(health="broken" if removed else "retrying", last_error=last_error,
                     lost_after=newest if removed else None,
                     reason=(f"WAL after {newest} was removed from the primary before it was captured "
                             f"(the primary's oldest WAL is {oldest_wal or 'unknown'}): that range is lost; a new base "
                             "backup starts a new recoverable window") if removed else
                            f"capturer is not streaming: {last_error or 'no connection to the primary yet'}")
    return entry


def up_command(driver: FleetDriver) -> str:
    server = getattr(driver, "server", None)  # an external server's driver knows its entry
    return "python manage.py fleet up" + (f" --server {server.name}" if server is not None else "")


def slot_alerts(driver: FleetDriver, slot: dict | None) -> list[str]:
    """What the capture slot says beyond the capturer's health: nobody streams from it, or the server keeps
    more WAL for it than PITR_SLOT_RETAINED_WARN_BYTES (its pg_wal grows until capture catches up)."""
    if slot is None or slot.get("wal_status") == "lost":
        return []  # the health says it: broken
    alerts = []
    retained = slot.get("retained_bytes") or 0
    if not slot["active"]:
        alerts.append(f"slot {driver.slot} is inactive: nothing streams from it while the server keeps its WAL "
                      f"({retained:,} bytes so far): `{up_command(driver)}` starts the capturer")
    limit = settings.PITR_SLOT_RETAINED_WARN_BYTES
    if limit and retained > limit:
        alerts.append(f"slot {driver.slot} retains {retained:,} bytes of WAL on the server, more than "
                      f"PITR_SLOT_RETAINED_WARN_BYTES ({limit:,}): capture is behind or stopped and the server's "
                      f"pg_wal grows until it catches up; check `{up_command(driver)}` and the capturer's log")
    if slot.get("wal_status") == "unreserved":
        alerts.append(f"slot {driver.slot} is past max_slot_wal_keep_size: the server removes its WAL at the next "
                      "checkpoint unless capture catches up now")
    return alerts


def newest_archived(archive: Path) -> str | None:
    try:
        names = [p.name for p in archive.iterdir() if WAL_FILE.match(p.name)]
    except FileNotFoundError:
        return None
    return max(names, key=lambda n: n[:24]) if names else None


def archive_age(archive: Path, newest: str | None) -> float | None:
    """Seconds since the archive last received WAL: pg_receivewal writes its newest file as WAL arrives."""
    if newest is None:
        return None
    try:
        return max(0.0, time.time() - (archive / newest).stat().st_mtime)
    except FileNotFoundError:  # renamed from .partial meanwhile
        return 0.0


def receiver_error(logfile: Path) -> str | None:
    """The last error pg_receivewal printed, from the end of the capturer's log."""
    try:
        with open(logfile, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - LOG_TAIL))
            lines = fh.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        match = RECEIVER_ERROR.search(line)
        if match:
            return match[1].strip()
    return None


def disk_space(driver: FleetDriver) -> dict[str, dict]:
    """Free space of the filesystems capture, backups and restores write to; low below PITR_DISK_WARN_PERCENT."""
    places = {"archive": driver.layout.archive, "backups": driver.layout.backups,
              "restore_target": driver.layout.datadir("restore_target").parent}
    found = {}
    for name, path in places.items():
        try:
            usage = shutil.disk_usage(path)
        except FileNotFoundError:
            continue
        percent = 100.0 * usage.free / usage.total if usage.total else 0.0
        found[name] = {"path": str(path), "free_bytes": usage.free, "total_bytes": usage.total,
                       "free_percent": round(percent, 1), "low": percent < settings.PITR_DISK_WARN_PERCENT}
    return found


def capture_problem(status: dict) -> str | None:
    """One line when capture is not streaming (status commands exit non-zero with it), else None."""
    if status["roles"]["primary"]["state"] != "running":
        return f"capture state unknown: primary is {status['roles']['primary']['state']}"
    capture = status.get("capturer")
    if capture is None:
        return "capture state unknown: " + ("; ".join(status["errors"]) or "the primary did not answer")
    found = [] if capture["health"] == "streaming" else [f"capture {capture['health']}: {capture['reason']}"]
    return "; ".join(found + capture.get("alerts", [])) or None


def fleet_check(driver: FleetDriver | None = None) -> list[str]:
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
                if pg.fetch_row(conn.execute("SELECT to_regclass('public.test_data')"))[0] is None:
                    problems.append("table test_data is missing on the primary: run `python manage.py fleet up`")
        except FleetError as exc:
            problems.append(str(exc))
        slots = {s["slot_name"]: s for s in status["slots"]}
        for name in (settings.PITR_CAPTURE_SLOT, settings.PITR_STANDBY_SLOT):
            if name not in slots:
                problems.append(f"replication slot {name} is missing: run `python manage.py fleet up`")
            elif not slots[name]["active"]:
                problems.append(f"replication slot {name} is not active: run `python manage.py fleet up`")
        problem = capture_problem(status)
        if problem:
            problems.append(problem)
    return problems


def capture_summary() -> dict:
    """The capturer's process state and lag; a down primary is a state to show, not an error."""
    try:
        status = fleet_status()
    except (PitrError, OSError, psycopg.Error) as exc:
        return {"state": "unknown", "errors": [first_line(exc)]}
    role = status["roles"]["capturer"]
    capture = status.get("capturer") or {}
    return {"state": role["state"], "pid": role.get("pid"), "restarts": role.get("restarts"),
            "streaming": capture.get("streaming"), "flush_lsn": capture.get("flush_lsn"),
            "lag_bytes": capture.get("lag_bytes"), "lag_seconds": capture.get("lag_seconds"),
            "health": capture.get("health", "unknown"), "reason": capture_problem(status) or "",
            "last_error": capture.get("last_error"), "lost_after": capture.get("lost_after"),
            "slot_active": capture.get("slot_active"), "retained_bytes": capture.get("retained_bytes"),
            "alerts": capture.get("alerts", []), "disk": status.get("disk", {}),
            "primary_lsn": status.get("primary_lsn"), "errors": status.get("errors", []),
            "standby": standby_summary(status)}


def standby_summary(status: dict) -> dict:
    """The hot standby: its process, whether it streams from the primary, how far behind."""
    role = status["roles"].get("standby", {})
    row = next((r for r in status.get("replication", []) if r["application_name"] == "pitrsite_standby"), None)
    return {"state": role.get("state"), "replication": row["state"] if row else "not streaming",
            "lag_bytes": row["lag_bytes"] if row else None,
            "lag_seconds": row["flush_lag_seconds"] if row else None}


def standby_problem(status: dict, driver: FleetDriver) -> str | None:
    """One line when the standby does not stream from the primary, else None."""
    summary = standby_summary(status)
    if summary["state"] != "running":
        return f"standby is {summary['state']}: run `{up_command(driver)}`"
    if summary["replication"] != "streaming":
        return (f"standby is running but {summary['replication']}: see {driver.layout.logfile('standby')}")
    return None


def server_summary(server, status: dict | None = None) -> dict:
    """One line of `server list` and the dashboard's server page: where it is, capture, restore target.

    `status`: this server's fleet_status, when the caller has it already."""
    from fleet import servers  # needs the app registry

    driver = get_driver(server)
    with servers.using(server):
        try:
            status = status or fleet_status(driver)
            cap = status.get("capturer") or {}
            capture = cap.get("health") or status["roles"]["capturer"]["state"]
            lag = {"lag_bytes": cap.get("lag_bytes"), "lag_seconds": cap.get("lag_seconds"),
                   "slot_active": cap.get("slot_active"), "retained_bytes": cap.get("retained_bytes")}
            problem = capture_problem(status)
            if server.retired_at is not None:  # stopped on purpose, not a capture problem
                capture = f"retired (successor {server.successor.name})" if server.successor else "retired"
                problem = None
        except PitrError as exc:
            capture, lag, problem = f"unknown ({exc})", {}, f"capture state unknown: {exc}"
    c = servers.conn(server)
    return {"name": server.name, "kind": server.kind, "host": c.host, "port": c.port, "capture": capture,
            "restore_port": driver.layout.port("restore_target"), "queue": server.queue,
            "archive": str(driver.layout.archive), "problem": problem or "", **lag,
            "retired_at": server.retired_at.isoformat() if server.retired_at else None,
            "successor": server.successor.name if server.successor else None}
