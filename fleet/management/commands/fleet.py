"""python manage.py fleet up|down|status|check|driver|start|stop|restart|pause|resume|kill [ROLE]"""
from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from fleet.layout import ROLES, check_role
from fleet.driver import get_driver
from fleet.status import capture_problem, fleet_check, fleet_status
from pitrsite.errors import PitrError

ROLE_ACTIONS = ("start", "stop", "restart", "pause", "resume", "kill")


class Command(BaseCommand):
    help = "Manage the fleet: primary, standby, WAL capturer and restore target."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=("up", "down", "status", "check", "driver", *ROLE_ACTIONS))
        parser.add_argument("role", nargs="?", help=f"one of {', '.join(ROLES)}")
        parser.add_argument("--json", action="store_true", help="machine-readable output (status)")

    def handle(self, action, role, **opts):
        try:
            self._handle(action, role, opts["json"])
        except PitrError as exc:
            raise CommandError(str(exc)) from None

    def _handle(self, action: str, role: str | None, as_json: bool) -> None:
        driver = get_driver()
        if action == "driver":  # which one PITR_FLEET_DRIVER chose (scripts/pitr asks before `up`)
            self.stdout.write(driver.name)
        elif action in ROLE_ACTIONS:
            if not role:
                raise CommandError(f"fleet {action} needs a role: one of {', '.join(ROLES)}")
            getattr(driver, action)(check_role(role))
            self.stdout.write(f"{role}: {driver.state(role)}")
        elif action == "up":
            for line in driver.up():
                self.stdout.write(line)
        elif action == "down":
            for line in driver.down() or ["nothing was running"]:
                self.stdout.write(line)
        elif action == "check":
            problems = fleet_check(driver)
            for line in problems:
                self.stderr.write(line)
            if problems:
                raise CommandError(f"{len(problems)} problem(s) found")
            self.stdout.write("fleet OK: directories, servers, test_data table and both slots active")
        else:
            self._status(fleet_status(driver), as_json)

    def _status(self, status: dict, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps({**status, "capture_problem": capture_problem(status)}, indent=2, default=str))
            self._exit_unless_capturing(status)
            return
        for role, entry in status["roles"].items():
            extra = "".join(f"  {k}={v}" for k, v in entry.items() if k not in ("state",) and v is not None)
            self.stdout.write(f"{role:15} {entry['state']:8}{extra}")
        if status["capturer"]:
            cap = status["capturer"]
            lag = f"{cap['lag_seconds']:.1f} s" if cap["lag_seconds"] is not None else "? s"
            self.stdout.write(f"capture: {cap['health']}  flush {cap['flush_lsn']}  "
                              f"lag {cap['lag_bytes']} bytes, {lag}")
        for name, disk in status["disk"].items():
            self.stdout.write(f"disk {name:14} {disk['free_bytes'] / 2**30:.1f} GiB free ({disk['free_percent']}%) "
                              f"in {disk['path']}")
        for slot in status["slots"]:
            self.stdout.write(f"slot {slot['slot_name']:14} active={slot['active']}  restart_lsn={slot['restart_lsn']}")
        for error in status["errors"]:
            self.stderr.write(error)
        self._exit_unless_capturing(status)

    @staticmethod
    def _exit_unless_capturing(status: dict) -> None:
        """A status that exits 0 means capture streams: scripts and monitors can rely on it."""
        problem = capture_problem(status)
        if problem:
            raise CommandError(problem)
