"""python manage.py backups [--json]"""
from __future__ import annotations

from pitrsite.jobs import reap_local
from pitrsite.output import PitrCommand
from walcatalog.models import BaseBackup
from walcatalog.serializers import backup_dict


class Command(PitrCommand):
    help = "List base backups, newest first."

    def run(self, *args, **opts):
        reap_local()  # a killed job reads interrupted at once
        backups = list(BaseBackup.objects.all())
        self.out.result([backup_dict(b) for b in backups], [
            f"#{b.pk:<4} {b.label:30} {b.state:11} {b.compression:5} tl={b.timeline or '-'} "
            f"{b.start_lsn_text or '-'}..{b.stop_lsn_text or '-'} {'restorable' if b.restorable else ''} {b.error}"
            for b in backups])
