"""JSON shapes of catalog rows, shared by commands, the dashboard and storage descriptors."""
from __future__ import annotations

from pitrsite.jobs import Job
from walcatalog.models import BaseBackup


def job_dict(job: Job) -> dict:
    return {
        "id": job.pk, "state": job.state, "trigger": job.trigger, "current_step": job.current_step,
        "progress_done": job.progress_done, "progress_total": job.progress_total, "percent": job.percent,
        "steps": job.steps, "error": job.error,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "duration": job.duration,
    }


def backup_dict(backup: BaseBackup) -> dict:
    return {
        **job_dict(backup),
        "label": backup.label, "compression": backup.compression, "path": backup.path,
        "timeline": backup.timeline, "start_lsn": backup.start_lsn_text or None,
        "stop_lsn": backup.stop_lsn_text or None,
        "start_time": backup.start_time.isoformat() if backup.start_time else None,
        "stop_time": backup.stop_time.isoformat() if backup.stop_time else None,
        "size_raw": backup.size_raw, "size_stored": backup.size_stored, "segment_size": backup.segment_size,
        "manifest_verified": backup.manifest_verified, "restorable": backup.restorable,
    }
