"""/metrics in the Prometheus text format, built per request from the same facts as the overview.

Access (Prometheus scrapes carry no session):
- a logged-in user may always read it;
- when PITR_METRICS_TOKEN is set, a request with `Authorization: Bearer <token>` may read it, and
  nothing else may: behind a reverse proxy every client looks like loopback, so the token wins;
- when no token is set, only loopback clients (127.0.0.0/8, ::1) may read it without a login.
Everything else gets 401 (token set) or 403 (no token), saying what to do.
"""
from __future__ import annotations

import hmac
from datetime import datetime
import ipaddress
from typing import Iterator

from django.conf import settings
from django.utils import timezone
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dashboard import jobs, status
from fleet import servers
from fleet.models import Server
from pitrsite.jobs import JobState, reap_local
from walcatalog.uploader import storage_recovery_point


class Families:
    """Every gauge carries the server it is about (`server` label), so one scrape covers every server."""

    def __init__(self) -> None:
        self.found: dict[str, GaugeMetricFamily] = {}
        self.server = ""

    def add(self, name: str, doc: str, value, labels: dict[str, str] | None = None) -> None:
        labels = labels or {}
        family = self.found.get(name)
        if family is None:
            family = self.found[name] = GaugeMetricFamily(name, doc, labels=["server", *labels])
        if value is not None:  # an absent fact is an absent sample, not a zero
            family.add_metric([self.server, *labels.values()], float(value))

    def declare(self, name: str, doc: str, *labels: str) -> None:
        """A family that may have no sample this scrape (a labelled one, as before)."""
        self.found.setdefault(name, GaugeMetricFamily(name, doc, labels=["server", *labels]))


class PitrCollector(Collector):
    """Reads each server's overview once per scrape; absent facts are absent samples, not zeros."""

    def collect(self) -> Iterator[Metric]:
        reap_local()  # job counts by state must not count a dead job as running
        out = Families()
        for server in list(Server.objects.order_by("name")) or [servers.demo()]:
            out.server = server.name
            with servers.using(server):
                server_metrics(out, status.overview())
        yield from out.found.values()


def server_metrics(out: Families, view: status.Overview) -> None:
    capture = view.capture
    out.add("pitr_capture_up", "1 when pg_receivewal runs and streams from the primary",
            1 if capture.get("running") else 0)
    out.add("pitr_capture_lag_bytes", "WAL bytes the primary wrote that capture has not flushed",
            capture.get("lag_bytes"))
    out.add("pitr_capture_lag_seconds", "seconds since the capturer last received WAL while it is behind or paused "
            "(0 when caught up): the recovery point objective", capture.get("lag_seconds"))
    out.add("pitr_capture_broken", "1 when the slot or WAL capture needed is gone: a gap",
            1 if capture.get("health") == "broken" else 0)
    out.add("pitr_slot_active", "1 while a client streams from the capture slot, 0 when nobody does",
            None if capture.get("slot_active") is None else int(bool(capture["slot_active"])))
    out.add("pitr_slot_retained_bytes", "WAL bytes the server keeps for the capture slot (pg_current_wal_lsn() - "
            "restart_lsn)", capture.get("retained_bytes"))
    out.add("pitr_capture_alert", "1 while capture is not streaming or its slot is missing, inactive or retains "
            "more than PITR_SLOT_RETAINED_WARN_BYTES", 1 if capture.get("reason") or capture.get("health") in
            (None, "unknown") else 0)
    out.declare("pitr_disk_free_bytes", "free bytes of the filesystem each place writes to", "place")
    for place, usage in (capture.get("disk") or {}).items():
        out.add("pitr_disk_free_bytes", "", usage["free_bytes"], {"place": place})
    out.add("pitr_recoverable_window_start_timestamp_seconds", "earliest moment a restore can reach (unix time)",
            view.window_start and view.window_start.timestamp())
    out.add("pitr_recoverable_window_end_timestamp_seconds",
            "latest moment a restore can reach: the newest captured commit (unix time)",
            view.window_end and view.window_end.timestamp())
    out.declare("pitr_newest_segment_number", "newest complete WAL segment number per timeline", "timeline")
    for timeline, row in sorted(view.newest.items()):
        out.add("pitr_newest_segment_number", "", row["segno"], {"timeline": str(timeline)})
    out.add("pitr_wal_segments", "WAL segments in the catalog", view.segments)
    out.add("pitr_partial_segment_bytes", "size of the segment being captured",
            view.partial["size"] if view.partial else None)
    out.add("pitr_wal_segments_corrupt", "complete WAL segments whose content changed", view.corrupt)
    out.declare("pitr_periodic_task_failing", "1 while a beat task's last pass failed", "task")
    out.declare("pitr_periodic_task_errors", "failed passes of each beat task since the home began", "task")
    out.declare("pitr_periodic_task_last_success_timestamp_seconds", "when each beat task last passed (unix time)",
                "task")
    for task in view.tasks:
        label = {"task": task["task"]}
        out.add("pitr_periodic_task_failing", "", 1 if task["failing"] else 0, label)
        out.add("pitr_periodic_task_errors", "", task["errors"], label)
        if task["last_success_at"]:
            out.add("pitr_periodic_task_last_success_timestamp_seconds", "",
                    datetime.fromisoformat(task["last_success_at"]).timestamp(), label)
    out.add("pitr_wal_gaps", "gaps (runs of missing segments) in the catalog", len(view.gaps))
    point = storage_recovery_point() if "archive" in settings.STORAGES else None
    out.add("pitr_storage_newest_commit_age_seconds", "seconds since the newest commit held in the archive storage: "
            "what a restore from storage alone loses at most (the storage's recovery point)",
            point and (timezone.now() - point).total_seconds())
    out.add("pitr_last_backup_age_seconds", "seconds since the newest done base backup ended", view.last_backup_age)
    fleet_metrics(out, view)
    backup_metrics(out, view)
    out.declare("pitr_jobs", "jobs by kind and state", "kind", "state")
    for kind in jobs.models_by_kind():
        for state in JobState.values:
            out.add("pitr_jobs", "", view.job_counts.get(kind, {}).get(state, 0), {"kind": kind, "state": state})
    drill_metrics(out, view.drill)


def fleet_metrics(out: Families, view: status.Overview) -> None:
    """The standby, the restore target, storage use and the upload backlog."""
    standby = view.capture.get("standby") or {}
    out.add("pitr_standby_streaming", "1 while the hot standby streams from the primary",
            None if not standby or standby.get("state") is None else int(standby.get("replication") == "streaming"))
    out.add("pitr_standby_lag_bytes", "WAL bytes the standby has not flushed", standby.get("lag_bytes"))
    out.add("pitr_standby_lag_seconds", "the standby's flush lag (s)", standby.get("lag_seconds"))
    state = view.target.get("state")
    out.declare("pitr_restore_target_state", "1 for the restore target server's current state", "state")
    if state:
        out.add("pitr_restore_target_state", "", 1, {"state": state})
    out.declare("pitr_storage_bytes", "bytes held in each place, from the catalog", "place")
    for place, n in view.storage_bytes.items():
        out.add("pitr_storage_bytes", "", n, {"place": place})
    out.add("pitr_upload_backlog_segments", "complete WAL segments not yet copied to the archive storage",
            view.upload_backlog)
    upload = next((t for t in view.tasks if t["task"] == "upload"), None)
    out.add("pitr_upload_errors", "failed upload passes since the home began", upload["errors"] if upload else None)


def backup_metrics(out: Families, view: status.Overview) -> None:
    """The newest base backup, the schedule's next run, the last verified restore."""
    from restores.models import RestoreJob

    last = view.last_backup
    out.add("pitr_last_backup_duration_seconds", "how long the newest done base backup took", last and last.duration)
    out.declare("pitr_last_backup_size_bytes", "size of the newest done base backup", "kind")
    if last and last.size_raw is not None:
        out.add("pitr_last_backup_size_bytes", "", last.size_raw, {"kind": "raw"})
        out.add("pitr_last_backup_size_bytes", "", last.size_stored or 0, {"kind": "stored"})
    out.add("pitr_backup_too_old", "1 when the newest base backup is older than PITR_BACKUP_MAX_AGE",
            int(view.backup_too_old))
    out.add("pitr_next_scheduled_backup_timestamp_seconds", "when beat takes the next scheduled base backup "
            "(unix time)", view.next_backup and view.next_backup.timestamp())
    verified = RestoreJob.objects.filter(state=JobState.DONE).exclude(promoted_at=None).order_by("-finished_at").first()
    out.add("pitr_last_verified_restore_age_seconds",
            "seconds since the newest restore that promoted and passed its checks ended",
            verified and verified.finished_at and (timezone.now() - verified.finished_at).total_seconds())
    out.add("pitr_oldest_recoverable_timestamp_seconds",
            "the oldest moment a restore can reach (unix time; the window's start)",
            view.window_start and view.window_start.timestamp())


def drill_metrics(out: Families, drill: dict) -> None:
    """The last restore drill (restores/drill.py); absent until one has a verdict."""
    last, good = drill.get("last"), drill.get("last_success")
    out.add("pitr_restore_drill_last_verdict", "1 when the last restore drill passed, 0 when it failed",
            None if last is None else int(last.drill_verdict == "passed"))
    out.add("pitr_restore_drill_last_age_seconds", "seconds since the last restore drill ended", drill.get("last_age"))
    out.add("pitr_restore_drill_last_success_timestamp_seconds", "when the last passed restore drill ended (unix time)",
            good and good.finished_at and good.finished_at.timestamp())
    out.add("pitr_restore_drill_last_success_age_seconds", "seconds since the last passed restore drill ended",
            drill.get("last_success_age"))


def _loopback(request: HttpRequest) -> bool:
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


def allowed(request: HttpRequest) -> tuple[bool, int, str]:
    """(allowed, status when not, why not)."""
    if request.user.is_authenticated:
        return True, 200, ""
    token = getattr(settings, "PITR_METRICS_TOKEN", "")
    if token:
        given = request.META.get("HTTP_AUTHORIZATION", "")
        if given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), token.encode()):
            return True, 200, ""
        return False, 401, "metrics need 'Authorization: Bearer <PITR_METRICS_TOKEN>' or a login\n"
    if _loopback(request):
        return True, 200, ""
    return False, 403, "metrics are served to loopback clients only: set PITR_METRICS_TOKEN to scrape from elsewhere\n"


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    ok, code, why = allowed(request)
    if not ok:
        response = HttpResponse(why, status=code, content_type="text/plain")
        if code == 401:
            response["WWW-Authenticate"] = 'Bearer realm="pitrsite metrics"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PitrCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
