"""python manage.py ensure_admin [--username NAME]: the admin superuser, created once with a generated password."""
from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from fleet import services
from pitrsite.errors import PitrError


class Command(BaseCommand):
    help = "Create the admin superuser once; its generated password is kept in PITR_HOME/secrets/admin_password."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    def handle(self, username: str, **opts) -> None:
        try:
            result = services.ensure_admin(username)
        except PitrError as exc:
            raise CommandError(str(exc)) from None
        if result["created"]:
            self.stdout.write(f"admin user {username!r} created")
        if result["password_file"]:
            secret = Path(result["password_file"]).read_text().strip()
            how = f"user {username}, password {secret} (kept in {result['password_file']})"
        else:
            how = (f"user {username} (created outside pitrsite; "
                   f"change its password with: manage.py changepassword {username})")
        self.stdout.write(f"log in at {services.web_url('/login/')} as {how}")
        self.stdout.write(f"dashboard: {services.web_url('/')} · admin: {services.web_url('/admin/')}")
