"""Celery tasks that belong to no single app."""
from __future__ import annotations

import logging

from celery import shared_task

import pitrsite.celery  # noqa: F401 - the configured app (broker, routes) before any of these is sent

from pitrsite.jobs import job_models, reap

log = logging.getLogger(__name__)


@shared_task(name="pitrsite.tasks.reap_jobs", ignore_result=True)
def reap_jobs() -> dict[str, int]:
    """Mark running jobs whose process died as interrupted, for every job model."""
    counts = {model._meta.label: reap(model) for model in job_models()}
    if any(counts.values()):
        log.info("reap_jobs: %s", counts)
    return counts
