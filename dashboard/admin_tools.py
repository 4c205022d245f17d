"""What the walcatalog and restores admins share: a progress bar column and start-job pages.

Starting a job from the admin goes through dashboard.actions, the same path
as the dashboard: the domain's queue_* function makes the row, Celery gets
its id. The admin's own machinery (admin_view) requires staff and checks CSRF.
"""
from __future__ import annotations

from typing import Callable

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from pitrsite.errors import PitrError
from pitrsite.jobs import Job
from dashboard import jobs
from dashboard.words import web_message

BAR_COLOURS = {"done": "#1f7a3a", "failed": "#b3261e", "interrupted": "#b3261e"}
JOB_FIELDS = ("state", "trigger", "started_by", "current_step", "progress_done", "progress_total", "steps", "error",
              "created_at", "started_at", "finished_at", "owner_host", "owner_pid", "heartbeat_at")


def progress_bar(job: Job) -> str:
    percent = job.percent
    width = 0 if percent is None else percent
    label = "—" if percent is None else f"{percent:.0f}%"
    return format_html(
        '<div title="{}" style="width:110px;height:10px;background:#e6e8ec;border-radius:5px;overflow:hidden;'
        'display:inline-block;vertical-align:middle"><div style="width:{}%;height:100%;background:{}"></div></div> {}',
        job.current_step or job.state, f"{width:.1f}", BAR_COLOURS.get(job.state, "#2458a6"), label)


def user_of(request: HttpRequest) -> str:
    return request.user.get_username()


class ReadOnlyAdmin(admin.ModelAdmin):
    """The catalog is computed by the indexer: looked at here, never edited by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest):
        """Every server's rows (the default manager sees one server's): filtered by server in the sidebar."""
        manager = getattr(self.model, "all_servers", None)
        if manager is None:
            return super().get_queryset(request)
        ordering = self.get_ordering(request)
        return manager.get_queryset().order_by(*ordering) if ordering else manager.get_queryset()

    def get_list_filter(self, request: HttpRequest):
        found = tuple(super().get_list_filter(request))
        return ("server", *found) if hasattr(self.model, "all_servers") else found


class JobAdmin(ReadOnlyAdmin):
    """Job rows are written by their jobs; staff start new ones through the start page and actions."""

    start_label = "Start"
    change_list_template = "admin/pitr_job_change_list.html"
    list_per_page = 50
    show_full_result_count = False

    @admin.display(description="progress")
    def progress(self, job: Job) -> str:
        return progress_bar(job)

    @admin.display(description="started by", ordering="started_by")
    def who(self, job: Job) -> str:
        """The user, else what started it (beat, a command, a chaos run)."""
        return jobs.who(job)

    def has_start_permission(self, request: HttpRequest) -> bool:
        opts = self.model._meta
        return (request.user.is_active and request.user.is_staff
                and request.user.has_perm(f"{opts.app_label}.add_{opts.model_name}"))

    def start_view(self, request: HttpRequest) -> HttpResponse:
        raise NotImplementedError

    def get_urls(self):
        opts = self.model._meta
        return [path("start/", self.admin_site.admin_view(self.start_view),
                     name=f"{opts.app_label}_{opts.model_name}_start")] + super().get_urls()

    def changelist_view(self, request: HttpRequest, extra_context=None):
        opts = self.model._meta
        extra = {"start_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_start"),
                 "start_label": self.start_label, "can_start": self.has_start_permission(request)}
        return super().changelist_view(request, {**(extra_context or {}), **extra})

    def form_page(self, request: HttpRequest, title: str, form, *, queryset=None, action: str = "",
                  note: str = "", error: str = "", code: int = 200) -> HttpResponse:
        context = {**self.admin_site.each_context(request), "title": title, "form": form, "opts": self.model._meta,
                   "queryset": queryset, "action": action, "note": note, "error": web_message(error) if error else "",
                   "action_checkbox_name": ACTION_CHECKBOX_NAME}
        return TemplateResponse(request, "admin/pitr_start_form.html", context, status=code)

    def started(self, request: HttpRequest, job: Job, what: str) -> HttpResponseRedirect:
        opts = job._meta
        self.message_user(request, f"{what} queued", messages.SUCCESS)
        return HttpResponseRedirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[job.pk]))

    def try_start(self, request: HttpRequest, start: Callable[[], Job], what: str) -> HttpResponse | PitrError:
        """Run start(); a PitrError (planner, broker) is returned for the caller to show."""
        try:
            job = start()
        except PitrError as exc:
            return exc
        return self.started(request, job, f"{what} #{job.pk}")
