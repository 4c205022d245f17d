"""python manage.py fleet up|down|status|check|driver|start|stop|restart|pause|resume|kill [ROLE]"""
from __future__ import annotations

from django.core.management.base import CommandError

from fleet.layout import ROLES, check_role
from fleet.driver import get_driver
from fleet.status import capture_problem, fleet_check, fleet_status
from pitrsite.output import PitrCommand

ROLE_ACTIONS = ("start", "stop", "restart", "pause", "resume", "kill")


class Command(PitrCommand):
    help = "Manage the fleet: primary, standby, WAL capturer and restore target."

    json_help = "machine-readable output (status)"

    def arguments(self, parser):
        parser.add_argument("action", choices=("up", "down", "status", "check", "driver", *ROLE_ACTIONS))
        parser.add_argument("role", nargs="?", help=f"one of {', '.join(ROLES)}")

    def run(self, action: str, role: str | None, **opts) -> None:
        driver = get_driver()
        if action == "driver":  # which one PITR_FLEET_DRIVER chose (scripts/pitr asks before `up`)
            self.stdout.write(driver.name)
        elif action in ROLE_ACTIONS:
            if not role:
                raise CommandError(f"fleet {action} needs a role: one of {', '.join(ROLES)}")
            getattr(driver, action)(check_role(role))
            self.out.result({"role": role, "state": driver.state(role)}, f"{role}: {driver.state(role)}")
        elif action == "up":
            self.out.result(driver.up())
        elif action == "down":
            self.out.result(driver.down() or ["nothing was running"])
        elif action == "check":
            problems = fleet_check(driver)
            for line in problems:
                self.out.warn(line)
            if problems:
                self.out.fail(f"{len(problems)} problem(s) found", problems=problems)
            self.out.result({"problems": []}, "fleet OK: directories, servers, test_data table and both slots active")
        else:
            self._status(fleet_status(driver))

    def _status(self, status: dict) -> None:
        problem = capture_problem(status)
        self.out.result({**status, "capture_problem": problem}, self._text(status))
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
