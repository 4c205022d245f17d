"""What every long job shares: explicit states, progress in its own row, and a reaper.

A job row is the source of truth for progress (not Celery's result backend),
so it survives restarts. A job whose process died (SIGKILL of a worker) is
found by the reaper and marked interrupted: it never reads as succeeded.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Callable, ClassVar, Iterator, Protocol, Self, TextIO, TypeVar

from django.apps import apps
from django.db import DatabaseError, connection, models
from django.utils import timezone

from pitrsite import joblog, procs
from pitrsite.errors import JobCancelled, LockBusy, PitrError, StepFailed, first_line
from pitrsite.locks import HOST, Lock
from pitrsite.runner import kill_children

log = logging.getLogger(__name__)
# A job on another host is declared dead after STALE_AFTER s without a heartbeat; it beats far more often.
STALE_AFTER = 120.0
HEARTBEAT_INTERVAL = 20.0


class JobState(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"


ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING)
ENDED_BADLY = (JobState.FAILED, JobState.INTERRUPTED, JobState.CANCELLED)


class Job(models.Model):
    """Abstract base of backups, restores and chaos runs."""

    state = models.CharField(max_length=12, choices=JobState.choices, default=JobState.QUEUED, db_index=True)
    trigger = models.CharField(max_length=16, default="command", help_text="command, celery, admin, dashboard or chaos")
    started_by = models.CharField(max_length=150, blank=True, help_text="the user who started it from the web")
    current_step = models.CharField(max_length=64, blank=True)
    progress_done = models.BigIntegerField(default=0)
    progress_total = models.BigIntegerField(null=True, blank=True)
    steps = models.JSONField(default=list, blank=True, help_text="[{name, started_at, seconds}] in order")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    owner_host = models.CharField(max_length=255, blank=True)
    owner_pid = models.IntegerField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    objects: ClassVar[models.Manager[Self]]  # every concrete job model has the default manager
    kind: ClassVar[str]  # "backup", "restore", "chaos": its name in URLs, metrics and lists

    class Meta:
        abstract = True

    @property
    def percent(self) -> float | None:
        if not self.progress_total:
            return 100.0 if self.state == JobState.DONE else None
        return min(100.0, 100.0 * self.progress_done / self.progress_total)

    @property
    def duration(self) -> float | None:
        if not self.started_at:
            return None
        return ((self.finished_at or timezone.now()) - self.started_at).total_seconds()

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    def save_fields(self, **fields) -> None:
        """Set fields on the instance and in its row, in one UPDATE of those columns only: a full save() would
        write back the progress and state other processes (the reporter, a cancel) have written since."""
        for key, value in fields.items():
            setattr(self, key, value)
        type(self)._base_manager.filter(pk=self.pk).update(**fields)

    def claim(self) -> bool:
        """queued -> running, only if nobody else got there first (healthchecks' conditional UPDATE)."""
        now = timezone.now()
        fields = dict(state=JobState.RUNNING, started_at=now, heartbeat_at=now, owner_host=HOST, owner_pid=os.getpid())
        if type(self)._base_manager.filter(pk=self.pk, state=JobState.QUEUED).update(**fields) != 1:
            return False
        for key, value in fields.items():
            setattr(self, key, value)
        return True

    def finish(self, state: str, error: str = "") -> None:
        """Record the end; a job a user cancelled keeps reading cancelled, whatever its code did next."""
        now = timezone.now()
        if type(self)._base_manager.filter(pk=self.pk).exclude(state=JobState.CANCELLED).update(
                state=state, error=error, finished_at=now) == 1:
            self.state, self.error, self.finished_at = state, error, now
        else:
            self.refresh_from_db(fields=["state", "error", "finished_at"])

    def refuse(self, reason: str) -> None:
        """queued -> failed with the reason: a job no worker will run must not read queued."""
        now = timezone.now()
        if type(self)._base_manager.filter(pk=self.pk, state=JobState.QUEUED).update(
                state=JobState.FAILED, error=f"refused: {reason}", finished_at=now) == 1:
            self.state, self.error, self.finished_at = JobState.FAILED, f"refused: {reason}", now

    def on_reaped(self) -> None:
        """Clean up what the dead process left (servers, slots, directories); models override it."""


class Reporter(Protocol):
    def step(self, name: str) -> None: ...
    def progress(self, done: int, total: int | None = None) -> None: ...
    def log(self, message: str) -> None: ...


J = TypeVar("J", bound=Job)


class JobReporter:
    """Writes progress into the job row, at most a few times a second."""

    min_interval = 0.3

    def __init__(self, job: Job, extra: Callable[[], dict] | None = None):
        self.job, self.extra, self._last = job, extra, 0.0

    def _save(self, **fields) -> None:
        """Every report is also where a cancelled job's code learns it must stop."""
        fields["heartbeat_at"] = timezone.now()
        if self.extra:
            fields.update(self.extra())
        for key, value in fields.items():
            setattr(self.job, key, value)
        model = type(self.job)
        if not model._base_manager.filter(pk=self.job.pk).exclude(state=JobState.CANCELLED).update(**fields):
            if model._base_manager.filter(pk=self.job.pk, state=JobState.CANCELLED).exists():
                raise JobCancelled(f"{model._meta.verbose_name} #{self.job.pk} was cancelled")
        self._last = time.monotonic()

    def step(self, name: str) -> None:
        now = timezone.now()
        steps = list(self.job.steps)
        if steps and steps[-1].get("seconds") is None:
            steps[-1]["seconds"] = round((now - datetime.fromisoformat(steps[-1]["started_at"])).total_seconds(), 3)
        if name:
            steps.append({"name": name, "started_at": now.isoformat(), "seconds": None})
        log.debug("job %s #%s: %s", type(self.job).__name__, self.job.pk, name or "finished")
        joblog.append(job_key(self.job), f"== {name}" if name else "== finished")
        self._save(current_step=name, steps=steps, progress_done=0, progress_total=None)

    def progress(self, done: int, total: int | None = None) -> None:
        self.job.progress_done, self.job.progress_total = done, total
        if time.monotonic() - self._last >= self.min_interval or (total and done >= total):
            self._save(progress_done=done, progress_total=total)

    def log(self, message: str) -> None:
        log.debug("job %s #%s: %s", type(self.job).__name__, self.job.pk, message)
        joblog.append(job_key(self.job), message)

    def heartbeat(self) -> None:
        self._save()


class ConsoleReporter:
    """Progress for a terminal: a tqdm bar per step when the stream is a tty, plain step lines otherwise."""

    def __init__(self, stream: TextIO | None = None, inner: Reporter | None = None):
        self.stream = stream or sys.stderr
        self.inner = inner  # the job row is updated too, so the dashboard sees command-run jobs
        self.tty = self.stream.isatty()
        self.bar: Any = None  # a tqdm bar; tqdm is imported only for a terminal (0.1-0.3 s of start-up)

    def step(self, name: str) -> None:
        if self.inner:
            self.inner.step(name)
        self._close()
        if name and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(desc=f"{name:24}", file=self.stream, leave=True, dynamic_ncols=True)
        elif name:
            self.stream.write(f"{name}...\n")
            self.stream.flush()

    def progress(self, done: int, total: int | None = None) -> None:
        if self.inner:
            self.inner.progress(done, total)
        if self.bar is not None:
            if total and self.bar.total != total:
                self.bar.total = total
            self.bar.n = min(done, total) if total else done
            self.bar.refresh()

    def log(self, message: str) -> None:
        if self.inner:
            self.inner.log(message)
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        else:
            self.stream.write(message + "\n")

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_job(job: J, reporter: Reporter, work: Callable[[], None]) -> J:
    """Run work() as the job: claimed first, then done or failed with 'failure <step> (<why>)'."""
    if not job.claim():
        job.refresh_from_db(fields=["state"])
        raise PitrError(f"{type(job)._meta.verbose_name} #{job.pk} is already {job.state}: nothing to do")
    try:
        try:
            with heartbeat(job):
                work()
        finally:
            kill_children(job_key(job))  # nothing a job started outlives it
    except BaseException as exc:  # noqa: BLE001 - record every failure, then re-raise the unexpected ones
        if was_cancelled(job):
            clean_after_cancel(job)
            raise JobCancelled(f"{type(job)._meta.verbose_name} #{job.pk} was cancelled") from exc
        failed = exc if isinstance(exc, StepFailed) else StepFailed(job.current_step or "starting", first_line(exc))
        interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
        job.finish(JobState.INTERRUPTED if interrupted else JobState.FAILED, str(failed))
        if isinstance(exc, (StepFailed, LockBusy)):
            raise
        if isinstance(exc, PitrError):
            raise failed from exc
        raise
    reporter.step("")
    job.finish(JobState.DONE)
    return job


def was_cancelled(job: Job) -> bool:
    return type(job)._base_manager.filter(pk=job.pk, state=JobState.CANCELLED).exists()


def clean_after_cancel(job: Job) -> None:
    """What the reaper does for a dead job (a restore target stopped, half-written files removed), done by the
    process that ran it, once its code has stopped."""
    job.refresh_from_db(fields=["state", "error", "finished_at", "current_step"])
    try:
        job.on_reaped()
    except (PitrError, OSError, DatabaseError) as exc:
        log.warning("%s #%s: cleanup after the cancel failed: %s", type(job).__name__, job.pk, exc)


def run_exclusive(job: J, lock: Lock, reporter: Reporter, work: Callable[[], None]) -> J:
    """run_job under the lock; refused, the row says why instead of staying queued."""
    try:
        with lock.held():
            return run_job(job, reporter, work)
    except LockBusy as exc:
        job.refuse(str(exc))
        raise


@contextmanager
def heartbeat(job: Job, interval: float | None = None) -> Iterator[None]:
    """Beat heartbeat_at from a daemon thread while the job runs, so a silent long step
    (an extract, a replay) is not declared dead by a reaper on another host."""
    stop = threading.Event()
    every = interval or HEARTBEAT_INTERVAL
    model, pk = type(job), job.pk

    def beat() -> None:
        try:
            while not stop.wait(every):
                try:
                    model._base_manager.filter(pk=pk, state=JobState.RUNNING).update(heartbeat_at=timezone.now())
                except DatabaseError as exc:  # a busy database: the next beat will do
                    log.debug("heartbeat of %s #%s: %s", model.__name__, pk, exc)
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_key(job)}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()  # not joined: a beat stuck on a locked database must not hold up the job's end


def job_key(job: Job) -> str:
    return f"{type(job).__name__}-{job.pk}"


def job_models() -> list[type[Job]]:
    """Every concrete job model installed (base backups, restores, chaos runs, ...)."""
    return [m for m in apps.get_models() if issubclass(m, Job) and not m._meta.abstract]


def reap(model: type[Job], stale_after: float = STALE_AFTER, local_only: bool = False) -> int:
    """Mark running jobs whose process is gone as interrupted; returns how many.

    local_only: only jobs of this host, checked by pid; cheap enough for every read of job state.
    """
    count = 0
    running = model._base_manager.filter(state=JobState.RUNNING)
    for job in running.filter(owner_host=HOST) if local_only else running:
        if job.owner_host == HOST:
            dead = not procs.alive(job.owner_pid)
        else:  # another machine: trust the heartbeat
            dead = job.heartbeat_at is None or (timezone.now() - job.heartbeat_at).total_seconds() > stale_after
        if dead and _mark_interrupted(job):
            count += 1
    return count


def reap_local() -> int:
    """Reap this host's dead jobs of every kind: called wherever job state is read."""
    return sum(reap(model, local_only=True) for model in job_models())


def _mark_interrupted(job: Job) -> bool:
    """running -> interrupted (once, whoever reaps first), then clean up what the dead process left."""
    model = type(job)
    note = f"interrupted: the process running it ({job.owner_host} pid {job.owner_pid}) is gone"
    if model._base_manager.filter(pk=job.pk, state=JobState.RUNNING).update(
            state=JobState.INTERRUPTED, finished_at=timezone.now(),
            error=f"{note}; last step was {job.current_step or 'none'}") != 1:
        return False
    log.warning("%s #%s %s", model.__name__, job.pk, note)
    if job.owner_host == HOST:  # its processes and files are here
        kill_children(job_key(job))
        try:
            job.on_reaped()
        except (PitrError, OSError, DatabaseError) as exc:  # the row is right already; say what is left
            log.warning("%s #%s: cleanup after the kill failed: %s", model.__name__, job.pk, exc)
    return True
