import os
from importlib import import_module

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pitrsite.settings")
application = get_wsgi_application()

# Each gunicorn worker loads the URLconf and what the command API queues jobs with (imported lazily by
# dashboard.actions) while it boots, not inside the first request: the first `scripts/pitr restore` after
# `services up` once waited 1.2 s for these imports before its job was queued.
for _module in ("pitrsite.urls", "restores.service", "restores.tasks", "restores.cli", "walcatalog.backups",
                "walcatalog.tasks", "walcatalog.cli"):
    import_module(_module)
