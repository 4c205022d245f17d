"""python manage.py services up|down|status|list [--json]: Redis, web, Celery worker, beat and pgAdmin."""
from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from fleet import services
from pitrsite.errors import PitrError


class Command(BaseCommand):
    help = "Start, stop or show the app's processes (Redis, web, Celery worker, Celery beat), each supervised."

    def add_arguments(self, parser):
        parser.add_argument("action", choices=("up", "down", "status", "list"))
        parser.add_argument("--json", action="store_true", help="machine-readable output (status)")

    def handle(self, action: str, **opts) -> None:
        try:
            if action == "list":  # what `up` would start (scripts/pitr asks before installing pgAdmin)
                self.stdout.write(" ".join(services.managed_services()))
            elif action == "up":
                for line in services.up():
                    self.stdout.write(line)
            elif action == "down":
                for line in services.down() or ["nothing was running"]:
                    self.stdout.write(line)
            else:
                self._status(services.services_status(), opts["json"])
        except PitrError as exc:
            raise CommandError(str(exc)) from None

    def _status(self, status: dict, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps(status, indent=2))
            return
        for name, entry in status["services"].items():
            extra = "".join(f"  {key}={entry[key]}" for key in ("pid", "restarts", "port")
                            if entry.get(key) is not None)
            self.stdout.write(f"{name:8} {entry['state']:10}{extra}")
            if entry.get("last_exit") and entry.get("restarts"):
                self.stdout.write(f"{'':8} last exit {entry['last_exit']['how']} at {entry['last_exit']['at']}")
        self.stdout.write(f"web: {status['web_url']}")
