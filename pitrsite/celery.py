"""The Celery app and its beat schedule (intervals from settings)."""
from __future__ import annotations

import os

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pitrsite.settings")

app = Celery("pitrsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.autodiscover_tasks(["pitrsite"])  # pitrsite.tasks (reap_jobs): pitrsite is not an installed app


@app.on_after_finalize.connect
def setup_schedule(sender: Celery, **kwargs) -> None:
    from django.conf import settings

    schedule = {
        "index-wal": ("walcatalog.tasks.index_wal", settings.PITR_INDEX_INTERVAL),
        "scrub-wal": ("walcatalog.tasks.scrub", settings.PITR_SCRUB_INTERVAL),
        "reap-jobs": ("pitrsite.tasks.reap_jobs", settings.PITR_REAP_INTERVAL),
        "upload": ("walcatalog.tasks.upload", settings.PITR_UPLOAD_INTERVAL),
        "retention": ("walcatalog.tasks.retention", settings.PITR_RETENTION_INTERVAL),
        "restore-drill": ("restores.tasks.drill", settings.PITR_DRILL_INTERVAL),
    }
    for name, (task, seconds) in schedule.items():
        if seconds > 0:  # 0 turns a schedule off
            sender.conf.beat_schedule[name] = {"task": task, "schedule": seconds}
    cron = backup_crontab()
    if cron is not None:
        sender.conf.beat_schedule["base-backup"] = {"task": "walcatalog.tasks.scheduled_backup", "schedule": cron}


def backup_crontab() -> crontab | None:
    """PITR_BACKUP_SCHEDULE as Celery's crontab; None when it is "disable"."""
    from django.conf import settings

    if settings.PITR_BACKUP_SCHEDULE == "disable":
        return None
    minute, hour, day_of_month, month_of_year, day_of_week = settings.PITR_BACKUP_SCHEDULE.split()
    return crontab(minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
                   day_of_week=day_of_week)
