"""Dashboard pages. Reading needs a login; starting anything needs staff, POST and CSRF.

Start actions go through dashboard.actions, which calls the domain's queue_*
functions (walcatalog.backups.queue_backup, restores.service.queue_restore,
chaos.run.queue_chaos) and hands the new row's id to Celery: the same
path as the admin actions.
"""
from __future__ import annotations

from functools import wraps
from typing import Callable

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST

from fleet import servers
from fleet.models import Server
from fleet.status import server_summary
from pitrsite.errors import PitrError
from pitrsite.jobs import reap_local
from restores.models import RestoreJob
from walcatalog.models import BaseBackup
from dashboard import actions, chaos_plot, jobs, progress, status, timeline
from dashboard.forms import BackupForm, ChaosForm, DashboardRestoreForm, RestoreForm, restore_target
from dashboard.words import web_message

PAGE = 50
# What each kind of job goes through (dashboard/progress.py), shown greyed until each starts.
RESTORE_STEPS, CHAOS_STEPS, BACKUP_STEPS = (progress.expected(kind) for kind in ("restore", "chaos", "backup"))


def _user(request: HttpRequest) -> str:
    return request.user.get_username()


def staff_action(view: Callable) -> Callable:
    """login (redirect) -> POST only (405) -> staff only (403); CSRF is the middleware's."""
    @login_required
    @require_POST
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("starting jobs needs a staff account")
        return view(request, *args, **kwargs)
    return wrapper


def page(login_view: Callable) -> Callable:
    @wraps(login_view)
    def reaped(request: HttpRequest, *args, **kwargs):
        reap_local()  # a SIGKILLed job reads interrupted on the next page, not at the next beat
        return login_view(request, *args, **kwargs)
    return login_required(require_GET(reaped))


def show(request: HttpRequest, template: str, nav: str, code: int = 200, **context) -> HttpResponse:
    """render() plus what the layout needs on every page."""
    context.update(nav=nav, chaos_enabled=jobs.job_model("chaos") is not None, backup_form=BackupForm(),
                   server=servers.current(), all_servers=Server.objects.order_by("name"))
    return render(request, f"dashboard/{template}", context, status=code)


@page
def servers_page(request: HttpRequest) -> HttpResponse:
    """Every protected server: where it is, its capture (lag, slot, alerts), its catalog's window, gaps and newest
    backup, its restore target; each links to its pages."""
    rows = []
    for server in Server.objects.order_by("name"):
        with servers.using(server):
            view = status.overview(with_capture=False)
            rows.append({**server_summary(server), "window": view.window_text, "gaps": len(view.gaps),
                         "last_backup_age": view.last_backup_age})
    return show(request, "servers.html", "servers", rows=rows)


def _timeline_svg(view: status.Overview, key: str) -> str:
    def draw() -> str:
        return timeline.render_svg(timeline.aggregate(), view.gaps, (view.window_start, view.window_end))
    return mark_safe(status.cached("timeline-svg", key, draw))


@page
def overview(request: HttpRequest) -> HttpResponse:
    return show(request, "overview.html", "overview", o=status.overview())


@page
def overview_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(status.overview_json(status.overview()))


@page
def timeline_page(request: HttpRequest) -> HttpResponse:
    key = status.fingerprint()
    view = status.overview(with_capture=False, key=key)
    return show(request, "timeline.html", "timeline", o=view, svg=_timeline_svg(view, key), legend=timeline.legend())


@page
def backups(request: HttpRequest) -> HttpResponse:
    from walcatalog.retention import Policy, status_of_backups

    rows = Paginator(BaseBackup.objects.order_by("-created_at"), PAGE).get_page(request.GET.get("page"))
    return show(request, "backups.html", "backups", page=rows, retention=status_of_backups(),
                policy=Policy.of_server())


@staff_action
def backup_pin(request: HttpRequest, pk: int) -> HttpResponse:
    """Pin (retention never removes it) or unpin a backup."""
    backup = get_object_or_404(BaseBackup, pk=pk)
    pinned = request.POST.get("pinned") == "1"
    BaseBackup.objects.filter(pk=pk).update(pinned=pinned)
    messages.success(request, f"backup {backup.label} {'pinned: retention keeps it' if pinned else 'unpinned'}")
    return redirect("dashboard:backups")


@page
def backup_detail(request: HttpRequest, pk: int) -> HttpResponse:
    backup = get_object_or_404(BaseBackup, pk=pk)
    return show(request, "backup.html", "backups", job=backup, data=jobs.job_json(backup),
                restores=backup.restores.order_by("-created_at")[:20], expected_steps=BACKUP_STEPS)


@staff_action
def backup_start(request: HttpRequest) -> HttpResponse:
    form = BackupForm(request.POST)
    if not form.is_valid():
        choices = form.fields["compression"].choices  # type: ignore[attr-defined]  # a ChoiceField
        messages.error(request, "choose a compression: " + ", ".join(c for c, _ in choices))
        return redirect("dashboard:backups")
    try:
        backup = actions.start_backup(form.cleaned_data["compression"], trigger="dashboard", user=_user(request))
    except PitrError as exc:
        messages.error(request, web_message(exc))
        return redirect("dashboard:backups")
    messages.success(request, f"backup {backup.label} queued", extra_tags="queued")
    return redirect("dashboard:backup", pk=backup.pk)


@page
def restores(request: HttpRequest) -> HttpResponse:
    rows = Paginator(RestoreJob.objects.select_related("backup").order_by("-created_at"), PAGE)
    return show(request, "restores.html", "restores", page=rows.get_page(request.GET.get("page")))


def _example_moment(view: status.Overview):
    """A moment inside the recoverable window, for the form's example: its middle."""
    if view.window_start is None or view.window_end is None:
        return None
    return view.window_start + (view.window_end - view.window_start) / 2


def _restore_form_page(request: HttpRequest, form: RestoreForm | None = None, error: str = "",
                       code: int = 200, initial: dict | None = None) -> HttpResponse:
    view = status.overview(with_capture=False)
    if form is None:
        form = DashboardRestoreForm(initial=initial, example=_example_moment(view))
    return show(request, "restore_new.html", "restores", code=code, form=form, o=view, plan_error=web_message(error),
                points=restore_points(), backups=BaseBackup.objects.filter(
                    state="done", manifest_verified=True).order_by("-stop_time")[:20])


def restore_points(limit: int = 50) -> list[dict]:
    """Named restore points, newest first, with the time of the segment holding them."""
    from walcatalog.models import RestorePoint

    rows = RestorePoint.objects.select_related("segment").order_by("-lsn")[:limit]
    return [{"name": p.name, "lsn": p.lsn, "timeline": p.timeline,
             "at": p.segment and (p.segment.last_commit_at or p.segment.indexed_at)} for p in rows]


@page
def restore_new(request: HttpRequest) -> HttpResponse:
    initial = {key: request.GET[key] for key in ("backup", "kind", "value") if request.GET.get(key)}
    return _restore_form_page(request, initial=initial or None)


@staff_action
def restore_start(request: HttpRequest) -> HttpResponse:
    form = DashboardRestoreForm(request.POST)
    if not form.is_valid():
        return _restore_form_page(request, form, code=400)
    try:
        job = actions.start_restore(restore_target(form.cleaned_data), trigger="dashboard", user=_user(request),
                                    as_new_primary=form.new_primary())
    except PitrError as exc:  # the planner's one-line reason: target outside the window, gap, bad value
        return _restore_form_page(request, form, error=str(exc), code=400)
    messages.success(request, f"restore #{job.pk} queued", extra_tags="queued")
    return redirect("dashboard:restore", pk=job.pk)


@page
def restore_detail(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_object_or_404(RestoreJob.objects.select_related("backup"), pk=pk)
    return show(request, "restore.html", "restores", job=job, data=jobs.job_json(job), expected_steps=RESTORE_STEPS,
                target=status.target_facts())


@staff_action
def job_cancel(request: HttpRequest, kind: str, pk: int) -> HttpResponse:
    job = _job_or_404(kind, pk)
    if actions.cancel_job(job, _user(request)):
        messages.success(request, web_message(f"{job} cancelled: its tools were stopped"))
    else:
        job.refresh_from_db()
        messages.error(request, web_message(f"{job} is {job.state} already: nothing to cancel"))
    return redirect(jobs.detail_url(job))


@page
def job_log(request: HttpRequest, kind: str, pk: int) -> HttpResponse:
    """The job's whole log as a text file."""
    from pitrsite.joblog import path_of
    from pitrsite.jobs import job_key

    job = _job_or_404(kind, pk)
    path = path_of(job_key(job))
    text = path.read_text(errors="replace") if path.exists() else "(nothing logged yet)\n"
    response = HttpResponse(text, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{kind}-{pk}.log"'
    return response


@page
def job_json(request: HttpRequest, kind: str, pk: int) -> JsonResponse:
    model = jobs.job_model(kind)
    if model is None:
        raise Http404(f"no job kind {kind}")
    return JsonResponse(jobs.job_json(get_object_or_404(model, pk=pk)))


def _chaos_model():
    model = jobs.job_model("chaos")
    if model is None:
        raise Http404("chaos runs are not available in this version")
    return model


@page
def chaos_runs(request: HttpRequest) -> HttpResponse:
    rows = Paginator(_chaos_model().objects.order_by("-created_at"), PAGE).get_page(request.GET.get("page"))
    return show(request, "chaos_runs.html", "chaos", page=rows, chaos_form=ChaosForm())


@page
def chaos_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = get_object_or_404(_chaos_model(), pk=pk)
    svg = chaos_plot.render(run.writes_series, run.events, run.verifications)
    return show(request, "chaos.html", "chaos", job=run, data=jobs.job_json(run), svg=mark_safe(svg),
                legend=chaos_plot.legend(), verifications=[chaos_row(v) for v in run.verifications],
                expected_steps=CHAOS_STEPS)


def chaos_row(entry: dict) -> dict:
    """One per-T verification (chaos.check.verify_moment's result) as the table shows it."""
    count = entry.get("count") or {}
    end = entry.get("end_lsn") or {}
    return {"t": entry.get("moment") or entry.get("restored_to"), "kind": entry.get("kind", ""),
            "ok": entry.get("ok"), "restore_id": entry.get("restore_job"),
            "checks": entry.get("checks") or {}, "error": entry.get("error", ""),
            "expected_rows": entry.get("expected_rows"), "missing": entry.get("missing_ids") or [],
            "missing_count": entry.get("missing_count", 0), "extra": entry.get("extra_ids") or [],
            "extra_count": entry.get("extra_count", 0), "count": count,
            "end_lsn": end.get("final") if isinstance(end, dict) else end,
            "seconds": entry.get("seconds")}


@staff_action
def chaos_start(request: HttpRequest) -> HttpResponse:
    _chaos_model()
    form = ChaosForm(request.POST)
    if not form.is_valid():
        messages.error(request, "; ".join(f"{name}: {' '.join(errs)}"  # type: ignore[arg-type]  # ErrorList yields str
                                          for name, errs in form.errors.items()))
        return redirect("dashboard:chaos_runs")
    try:
        run = actions.start_chaos(form.params(), trigger="dashboard", user=_user(request))
    except PitrError as exc:
        messages.error(request, web_message(exc))
        return redirect("dashboard:chaos_runs")
    messages.success(request, f"chaos run #{run.pk} queued", extra_tags="queued")
    return redirect("dashboard:chaos", pk=run.pk)


def _job_or_404(kind: str, pk: int):
    model = jobs.job_model(kind)
    if model is None:
        raise Http404(f"no job kind {kind}")
    return get_object_or_404(model, pk=pk)
