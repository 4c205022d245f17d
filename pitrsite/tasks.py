"""Celery tasks that belong to no single app."""
from __future__ import annotations

import logging

from celery import shared_task
from django.apps import apps

from pitrsite.jobs import Job, reap

log = logging.getLogger(__name__)


def job_models() -> list[type[Job]]:
    """Every concrete job model installed (base backups, restores, chaos runs, ...)."""
    return [m for m in apps.get_models() if issubclass(m, Job) and not m._meta.abstract]


@shared_task(name="pitrsite.tasks.reap_jobs", ignore_result=True)
def reap_jobs() -> dict[str, int]:
    """Mark running jobs whose process died as interrupted, for every job model."""
    counts = {model._meta.label: reap(model) for model in job_models()}
    if any(counts.values()):
        log.info("reap_jobs: %s", counts)
    return counts
