from __future__ import annotations

from restores.models import RestoreJob
from walcatalog import walnames
from walcatalog.serializers import job_dict


def _lsn(value: int | None) -> str | None:
    return walnames.format_lsn(value) if value is not None else None


def restore_dict(job: RestoreJob) -> dict:
    return {
        **job_dict(job),
        "target": {"kind": job.target_kind, "value": job.target_value, "exclusive": job.exclusive,
                   "timeline": job.target_timeline or None},
        "backup": job.backup.label if job.backup else None,
        "plan": job.plan, "wal_first": job.wal_first, "wal_last": job.wal_last, "wal_files": job.wal_files,
        "uses_partial": job.uses_partial, "target_lsn": _lsn(job.target_lsn), "replay_lsn": _lsn(job.replay_lsn),
        "promoted_at": job.promoted_at.isoformat() if job.promoted_at else None,
        "final_lsn": _lsn(job.final_lsn), "final_timeline": job.final_timeline, "source": job.source,
        "drill_verdict": job.drill_verdict or None, "drill_detail": job.drill_detail,
        "as_new_primary": job.as_new_primary or None, "new_primary": job.plan.get("new_primary"),
    }
