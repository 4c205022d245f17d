"""python manage.py fleet up|down|status|check|driver|start|stop|restart|pause|resume|kill [ROLE]"""
from __future__ import annotations

from django.core.management.base import CommandError
from django.db import DatabaseError

from fleet import servers
from fleet.checks import refuse_new_cluster
from fleet.layout import ROLES, check_role
from fleet.driver import get_driver
from fleet.external import each_on_this_host, retired_line
from fleet.models import Server
from fleet.status import capture_problem, fleet_check, fleet_status, server_summary
from pitrsite.dbcheck import unless_unmigrated
from pitrsite.output import PitrCommand

ROLE_ACTIONS = ("start", "stop", "restart", "pause", "resume", "kill")


class Command(PitrCommand):
    help = "Manage the fleet: primary, standby, WAL capturer and restore target."

    json_help = "machine-readable output (status)"

    def arguments(self, parser):
        parser.add_argument("action", choices=("up", "down", "status", "check", "driver", *ROLE_ACTIONS))
        parser.add_argument("role", nargs="?", help=f"one of {', '.join(ROLES)}")
        parser.add_argument("--server", metavar="NAME", help="one server only (default: up/down every server, "
                                                             "status/check the demo fleet)")

    def run(self, action: str, role: str | None, **opts) -> None:
        if not opts.get("server"):  # the demo fleet, and for up/down every external server's capturer too
            self._run(action, role, every=True)  # no database query: status works without one
            return
        with servers.using(servers.resolve(opts["server"])):
            self._run(action, role, every=False)

    def _each_external(self, action: str) -> list[str]:
        """The capturer and restore target of every external server on this host's queues (PITR_WORKER_QUEUES):
        one failing says so and the others go on."""
        lines, failed = each_on_this_host(action)
        for line in failed:
            self.out.warn(line)
        if failed:
            self.out.fail(f"fleet {action} failed for {', '.join(f.split(':')[0] for f in failed)}")
        return lines

    def _run(self, action: str, role: str | None, every: bool) -> None:
        driver = get_driver()
        if action == "driver":  # which one PITR_FLEET_DRIVER chose (scripts/pitr asks before `up`)
            self.out.result({"driver": driver.name}, driver.name)
        elif action in ROLE_ACTIONS:
            if not role:
                raise CommandError(f"fleet {action} needs a role: one of {', '.join(ROLES)}")
            if action in ("start", "restart") and role == "capturer":
                servers.current().refuse_if_retired("capture")
            getattr(driver, action)(check_role(role))
            self.out.result({"role": role, "state": driver.state(role)}, f"{role}: {driver.state(role)}")
        elif action == "up":
            current = _current_unless_fresh()
            if current is not None and current.retired_at is not None:  # its primary is lost: no new one, no
                own = [retired_line(current)]                            # capture (restores still work)
            else:
                if current is not None:
                    refuse_new_cluster(current)
                own = driver.up()
            self.out.result(own + (self._each_external("up") if every else []))
        elif action == "down":
            self.out.result((driver.down() + (self._each_external("down") if every else [])) or ["nothing was running"])
        elif action == "check":
            problems = fleet_check(driver)
            for line in problems:
                self.out.warn(line)
            if problems:
                self.out.fail(f"{len(problems)} problem(s) found", problems=problems)
            self.out.result({"problems": []}, "fleet OK: directories, servers, test_data table and both slots active")
        else:
            self._status(fleet_status(driver), every)

    def _status(self, status: dict, every: bool) -> None:
        problem = capture_problem(status)
        # Every protected server in brief (port, capture, restore target port), as `server list --json` shows.
        others = _servers_in_brief(status) if every and self.out.as_json else []
        self.out.result({**status, "capture_problem": problem, "servers": others}, self._text(status))
        for error in status["errors"]:
            self.out.warn(error)
        if problem:  # a status that exits 0 means capture streams: scripts and monitors can rely on it
            self.out.fail(problem)

    @staticmethod
    def _text(status: dict) -> list[str]:
        lines = []
        for role, entry in status["roles"].items():
            extra = "".join(f"  {k}={v}" for k, v in entry.items() if k not in ("state",) and v is not None)
            lines.append(f"{role:15} {entry['state']:8}{extra}")
        if status["capturer"]:
            cap = status["capturer"]
            lag = f"{cap['lag_seconds']:.1f} s" if cap["lag_seconds"] is not None else "? s"
            lines.append(f"capture: {cap['health']}  flush {cap['flush_lsn']}  lag {cap['lag_bytes']} bytes, {lag}")
        for name, disk in status["disk"].items():
            lines.append(f"disk {name:14} {disk['free_bytes'] / 2**30:.1f} GiB free ({disk['free_percent']}%) "
                         f"in {disk['path']}")
        for slot in status["slots"]:
            lines.append(f"slot {slot['slot_name']:14} active={slot['active']}  restart_lsn={slot['restart_lsn']}")
        return lines


def _current_unless_fresh() -> Server | None:
    """The current server; None in a home whose database is not migrated yet, which holds no server entry to
    retire or protect: the demo fleet comes up and down without Django's database, as its status does."""
    return unless_unmigrated(servers.current, None)


def _servers_in_brief(current: dict) -> list[dict]:
    """Each server's summary (the current one's from the status already read); none when Django's database
    is not there (status must work without it)."""
    try:
        chosen = servers.current()
        return [server_summary(server, current if server.pk == chosen.pk else None)
                for server in Server.objects.order_by("name")]
    except DatabaseError:
        return []

