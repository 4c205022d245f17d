"""Restore drills: prove, on a schedule, that the newest moment can be restored and the copy is sound.

A drill is a RestoreJob with trigger "drill" and target latest, run by the engine's run_restore.
After promotion it checks that recovery reached the end of the WAL staged for it (the newest
captured record the catalog knew of when the drill began), then runs pg_amcheck on the copy
(heap and B-tree checks, every database; the amcheck extension is installed into the throw-away
copy). The verdict, the pg_amcheck summary and the durations go on the job. A drill refused
because another restore or a chaos run holds the restore target is recorded as skipped, never
left queued.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, cast

from django.conf import settings
from django.utils import timezone

from fleet import pg, servers
from fleet.driver import get_driver
from pitrsite import locks
from pitrsite.errors import LockBusy, PitrError, first_line
from pitrsite.jobs import JobState, Reporter
from restores.engine import ROLE, refresh_catalog, run_restore
from restores.models import (
    DRILL_TRIGGER,
    DrillVerdict,
    RestoreJob,
    TargetKind,
)
from restores.planner import RestoreTarget, plan
from walcatalog import walnames

log = logging.getLogger(__name__)

# --heapallindexed: every heap tuple must be found in each B-tree (catches an index missing rows,
# not only a malformed page): 2.6 s instead of 0.6 s on 150 MB, small next to the restore (README).
AMCHECK_OPTIONS = ("--all", "--install-missing", "--heapallindexed")
AMCHECK_CORRUPTION = 2  # pg_amcheck's exit status when it found corruption (1: it could not check)
SUMMARY_LINES = 20


@dataclass(frozen=True)
class Expected:
    """Where recovery must at least end: the end of the newest WAL the catalog held at the drill's start."""

    lsn: int
    segment: str


def new_drill(trigger_detail: str = "") -> RestoreJob:
    """A queued drill job; planning happens when it runs, so a drill without a backup reads failed."""
    return RestoreJob.objects.create(target_kind=TargetKind.LATEST, trigger=DRILL_TRIGGER,
                                     drill_detail={"started_by": trigger_detail} if trigger_detail else {})


def run_drill(job: RestoreJob, reporter: Reporter) -> RestoreJob:
    """The one domain function behind `manage.py drill` and the beat task."""
    began = time.monotonic()
    try:
        # A chaos run restores and then reads the restore target: a drill in between would fool it. Its
        # lock says so without importing chaos (which sits above restores).
        locks.CHAOS.refuse_if_held()
    except LockBusy as busy:
        return record(job, DrillVerdict.SKIPPED, f"skipped: {busy}", {})
    try:
        expected = expected_end()
    except PitrError as exc:
        return record(job, DrillVerdict.FAILED, f"cannot plan a restore of the newest moment ({exc})", {})
    detail: dict[str, Any] = {"expected_end_lsn": walnames.format_lsn(expected.lsn),
                              "expected_end_segment": expected.segment}
    try:
        job = run_restore(job, reporter)
    except LockBusy as busy:  # another restore holds the target: refused before it was claimed
        job.refresh_from_db()
        return record(job, DrillVerdict.SKIPPED, f"skipped: {busy}", detail)
    except Exception as exc:  # run_job has recorded it as the job's failure; the drill adds its verdict
        job.refresh_from_db()
        if not isinstance(exc, PitrError):
            log.exception("drill #%s: the restore raised", job.pk)
        return record(job, DrillVerdict.FAILED, f"the restore failed: {job.error or exc}", detail)
    detail["restore_seconds"] = round(time.monotonic() - began, 1)
    verdict, reason = checked(job, expected, reporter, detail)
    reporter.step("")
    detail["total_seconds"] = round(time.monotonic() - began, 1)
    return record(job, verdict, reason, detail)


def checked(job: RestoreJob, expected: Expected, reporter: Reporter, detail: dict) -> tuple[str, str]:
    """check_copy() under the restore lock, so no restore replaces the copy while it is checked."""
    locked = False
    try:
        with servers.lock(locks.RESTORE).held():
            locked = True
            if restored_since(job):
                return DrillVerdict.SKIPPED, "skipped: another restore replaced the copy before its checks"
            return check_copy(job, expected, reporter, detail)
    except Exception as exc:  # a drill that could not check never reads passed, nor stays pending
        if not locked:
            return DrillVerdict.SKIPPED, f"skipped: the copy could not be checked ({exc})"
        if not isinstance(exc, PitrError):
            log.exception("drill #%s: the checks raised", job.pk)
        return DrillVerdict.FAILED, f"the checks failed: {first_line(exc)}"


def expected_end() -> Expected:
    """Plan the latest restore now: the staged WAL will hold at least what the catalog holds now."""
    refresh_catalog()
    the_plan = plan(RestoreTarget(kind=TargetKind.LATEST))
    segments = the_plan.segments
    if not segments:  # the backup's own pg_wal is all there is
        assert the_plan.backup.stop_lsn is not None  # the plan's backup is verified: it has its LSNs
        return Expected(lsn=the_plan.backup.stop_lsn, segment=f"backup {the_plan.backup.label}")
    last = segments[-1]
    # A .partial's valid WAL ends where the indexer's pg_waldump stopped; a complete segment's last
    # record may cross into the next, uncaptured one, so only its newest commit is certain to replay.
    lsn = last.scanned_to if last.is_partial else max(
        [s.last_commit_lsn for s in segments if s.last_commit_lsn is not None] or [last.start_lsn])
    return Expected(lsn=lsn, segment=last.file_name)


def check_copy(job: RestoreJob, expected: Expected, reporter: Reporter, detail: dict) -> tuple[str, str]:
    """(verdict, reason): the end of the WAL reached, then pg_amcheck clean."""
    reporter.step("drill: checking the end of recovery")
    detail["final_lsn"] = job.final_lsn_text or None
    detail["end_reached"] = job.final_lsn is not None and job.final_lsn >= expected.lsn
    if not detail["end_reached"]:
        return DrillVerdict.FAILED, (f"recovery ended at {job.final_lsn_text or 'an unknown LSN'}, before the end of "
                                     f"the staged WAL ({walnames.format_lsn(expected.lsn)} in {expected.segment})")
    reporter.step("drill: pg_amcheck")
    detail["amcheck"] = amcheck()
    if detail["amcheck"]["exit"] == 0:
        return DrillVerdict.PASSED, ""
    what = "found corruption" if detail["amcheck"]["exit"] == AMCHECK_CORRUPTION else "could not check the copy"
    return DrillVerdict.FAILED, f"pg_amcheck {what}: {first_finding(detail['amcheck']['summary'])}"


def first_finding(lines: list[str]) -> str:
    """pg_amcheck names the relation on one line and says what is wrong on the next: one line of both."""
    if not lines:
        return "no output"
    head = lines[0].strip()
    return f"{head} {lines[1].strip()}" if head.endswith(":") and len(lines) > 1 else head


def amcheck() -> dict:
    """pg_amcheck on every database of the restored copy: exit status, seconds, first lines of its report.

    Through the copy's private socket as the original's superuser, as the restore's own checks log in: an
    external server's copy has no role of pitrsite's and no password pitrsite knows."""
    driver = get_driver()
    argv = [pg.tool("pg_amcheck"), *AMCHECK_OPTIONS, "-h", str(driver.socket_dir(ROLE)),
            "-p", str(driver.layout.port(ROLE)), "-U", servers.current().user or settings.PITR_PG_SUPERUSER,
            "--no-password"]
    began = time.monotonic()
    result = pg.run(argv, step="checking the copy (pg_amcheck)", env={"TZ": "UTC"},
                    timeout=settings.PITR_RESTORE_TIMEOUT, check=False)
    lines = [line for line in (result.stdout + "\n" + result.stderr).splitlines() if line.strip()]
    return {"exit": result.returncode, "seconds": round(time.monotonic() - began, 2),
            "options": list(AMCHECK_OPTIONS), "summary": lines[:SUMMARY_LINES], "lines": len(lines)}


def restored_since(job: RestoreJob) -> bool:
    """Whether another restore started after this one, so the restore target holds its copy, not ours."""
    return RestoreJob.objects.filter(started_at__gt=job.started_at).exclude(pk=job.pk).exists()


def record(job: RestoreJob, verdict: str, reason: str, detail: dict) -> RestoreJob:
    """Write the verdict; a failed or skipped drill never reads done, and never stays queued."""
    detail = {**job.drill_detail, **detail, "reason": reason}
    # The drill ends after its checks: finished_at moves there, so its age counts from its verdict.
    fields: dict = {"drill_verdict": verdict, "drill_detail": detail, "finished_at": timezone.now()}
    if verdict == DrillVerdict.SKIPPED or (verdict != DrillVerdict.PASSED and job.state in (JobState.QUEUED,
                                                                                             JobState.DONE)):
        fields.update(state=JobState.FAILED, error=reason)  # a skipped drill says why, even once refused
    RestoreJob.objects.filter(pk=job.pk).update(**fields)
    job.refresh_from_db()
    return job


def last_drill() -> RestoreJob | None:
    """The newest drill with a verdict of passed or failed (a skipped one proves nothing either way)."""
    return (RestoreJob.objects.filter(trigger=DRILL_TRIGGER,
                                      drill_verdict__in=[DrillVerdict.PASSED, DrillVerdict.FAILED])
            .order_by("-finished_at", "-pk").first())


def last_success() -> RestoreJob | None:
    return (RestoreJob.objects.filter(trigger=DRILL_TRIGGER, drill_verdict=DrillVerdict.PASSED)
            .order_by("-finished_at", "-pk").first())


def summary() -> dict:
    """What the overview and /metrics show: the last drill's verdict and age, the last success, a warning."""
    now = timezone.now()
    last, good = last_drill(), last_success()

    def age(job: RestoreJob | None) -> float | None:
        return (now - job.finished_at).total_seconds() if job and job.finished_at else None

    interval = settings.PITR_DRILL_INTERVAL
    warning = ""
    if last is not None and last.drill_verdict == DrillVerdict.FAILED:
        warning = f"the last restore drill (#{last.pk}) failed: {last.drill_detail.get('reason') or last.error}"
    # a drill with a verdict has finished (record() sets finished_at): its age is known
    elif last is not None and interval > 0 and cast(float, age(last)) > 2 * interval:
        warning = (f"the last restore drill (#{last.pk}) is {cast(float, age(last)) / 3600:.1f} h old, over twice "
                   f"PITR_DRILL_INTERVAL ({interval / 3600:.1f} h): is Celery beat running?")
    return {"interval": interval, "last": last, "last_age": age(last), "last_verdict": last and last.drill_verdict,
            "last_success": good, "last_success_age": age(good), "warning": warning}
