"""python manage.py services up|down|status|list [--json]: Redis, web, Celery worker, beat and pgAdmin."""
from __future__ import annotations

from fleet import services
from fleet.external import each_on_this_host
from pitrsite.output import PitrCommand


class Command(PitrCommand):
    help = "Start, stop or show the app's processes (Redis, web, Celery worker, Celery beat), each supervised."
    json_help = "machine-readable output (status)"

    def arguments(self, parser):
        parser.add_argument("action", choices=("up", "down", "status", "list"))

    def run(self, action: str, **opts) -> None:
        if action == "list":  # what `up` would start (scripts/pitr asks before installing pgAdmin)
            self.out.result(list(services.managed_services()), [" ".join(services.managed_services())])
        elif action == "up":
            # Capture runs apart from the app's services, but a host brought up with `services up` alone
            # (host B of the README's two-host layout) captures its servers too: each capturer is idempotent.
            lines, failed = each_on_this_host("up")
            for line in failed:
                self.out.warn(line)
            self.out.result(services.up() + lines)
            if failed:
                self.out.fail(f"capture of {len(failed)} server(s) did not start (see above)")
        elif action == "down":
            self.out.result(services.down() or ["nothing was running"])
        else:
            status = services.services_status()
            self.out.result(status, self._text(status))

    @staticmethod
    def _text(status: dict) -> list[str]:
        lines = []
        for name, entry in status["services"].items():
            extra = "".join(f"  {key}={entry[key]}" for key in ("pid", "restarts", "port")
                            if entry.get(key) is not None)
            lines.append(f"{name:8} {entry['state']:10}{extra}")
            if entry.get("last_exit") and entry.get("restarts"):
                lines.append(f"{'':8} last exit {entry['last_exit']['how']} at {entry['last_exit']['at']}")
        lines.append(f"web: {status['web_url']}")
        return lines
