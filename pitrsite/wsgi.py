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

# ... and opens its broker connection: the first job each worker queued waited 0.07-0.15 s for Celery's
# finalizing and the connection to Redis. A broker that is down now only moves that wait to the request.
from pitrsite.celery import app  # noqa: E402

app.finalize(auto=True)
try:
    with app.producer_or_acquire() as _producer:
        _producer.connection.ensure_connection(max_retries=0, timeout=2)
except Exception:  # noqa: BLE001 - a warm-up only; the request reports the broker's failure
    pass
