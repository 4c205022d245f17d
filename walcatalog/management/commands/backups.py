"""python manage.py backups [--json]"""
from __future__ import annotations

import json


from pitrsite.jobs import reap_local
from walcatalog.models import BaseBackup
from walcatalog.serializers import backup_dict
from fleet.command import ServerCommand


class Command(ServerCommand):
    help = "List base backups, newest first."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **opts):
        reap_local()  # a killed job reads interrupted at once
        backups = list(BaseBackup.objects.all())
        if opts["json"]:
            self.stdout.write(json.dumps([backup_dict(b) for b in backups], indent=2))
            return
        for b in backups:
            self.stdout.write(f"#{b.pk:<4} {b.label:30} {b.state:11} {b.compression:5} tl={b.timeline or '-'} "
                              f"{b.start_lsn_text or '-'}..{b.stop_lsn_text or '-'} "
                              f"{'restorable' if b.restorable else ''} {b.error}")
