"""python manage.py ensure_admin [--username NAME]: the admin superuser, created once with a generated password."""
from __future__ import annotations

from pathlib import Path

from fleet import services
from pitrsite.output import PitrCommand


class Command(PitrCommand):
    help = "Create the admin superuser once; its generated password is kept in PITR_HOME/secrets/admin_password."

    json_help = None

    def arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def run(self, username: str, **opts) -> None:
        result = services.ensure_admin(username)
        if result["created"]:
            self.out.line(f"admin user {username!r} created")
        if result["password_file"]:
            secret = Path(result["password_file"]).read_text().strip()
            how = f"user {username}, password {secret} (kept in {result['password_file']})"
        else:
            how = (f"user {username} (created outside pitrsite; "
                   f"change its password with: manage.py changepassword {username})")
        self.out.line(f"log in at {services.web_url('/login/')} as {how}")
        self.out.line(f"dashboard: {services.web_url('/')} · admin: {services.web_url('/admin/')}")
