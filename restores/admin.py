"""Admin for restore jobs: rows are written by the engine; staff start restores here (queued to Celery)."""
from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from dashboard.admin_tools import JOB_FIELDS, JobAdmin
from dashboard.forms import RestoreForm
from restores.models import RestoreJob
from walcatalog import walnames


@admin.register(RestoreJob)
class RestoreJobAdmin(JobAdmin):
    start_label = "Start a restore"
    list_display = ("id", "target_description", "state", "progress", "current_step", "backup", "replay_lsn_text",
                    "promoted_at", "final_lsn_text", "final_timeline", "trigger", "drill_verdict", "created_at")
    list_display_links = ("id", "target_description")
    list_filter = ("state", "target_kind", "exclusive", "trigger", "uses_partial", "source", "drill_verdict")
    search_fields = ("target_value", "error", "backup__label")
    list_select_related = ("backup",)
    date_hierarchy = "created_at"
    actions = ("restore_again",)
    readonly_fields = ("target_description", "target_kind", "target_value", "exclusive", "target_timeline", "backup",
                       "requested_backup_id", "plan", "wal_first", "wal_last", "wal_files", "uses_partial",
                       "target_lsn_text", "replay_lsn_text", "promoted_at", "final_lsn_text", "final_timeline", "source",
                       "progress", *JOB_FIELDS)
    fields = readonly_fields

    @admin.display(description="target LSN")
    def target_lsn_text(self, job: RestoreJob) -> str:
        return walnames.format_lsn(job.target_lsn) if job.target_lsn is not None else "—"

    @admin.display(description="replayed to")
    def replay_lsn_text(self, job: RestoreJob) -> str:
        return walnames.format_lsn(job.replay_lsn) if job.replay_lsn is not None else "—"

    @admin.display(description="final LSN")
    def final_lsn_text(self, job: RestoreJob) -> str:
        return job.final_lsn_text or "—"

    def _form_and_start(self, request: HttpRequest, form: RestoreForm, title: str, **page) -> HttpResponse:
        from dashboard import actions
        from dashboard.views import restore_target

        if form.is_bound and form.is_valid():
            done = self.try_start(request, lambda: actions.start_restore(restore_target(form.cleaned_data), "admin"),
                                  "restore")
            if isinstance(done, HttpResponse):
                return done
            return self.form_page(request, title, form, error=str(done), code=400, **page)
        return self.form_page(request, title, form, code=400 if form.is_bound else 200,
                              note="The restore target server is stopped and its data directory replaced. The planner "
                                   "checks the target against the catalog before anything is queued.", **page)

    def start_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_start_permission(request):
            raise PermissionDenied("starting restores needs the add permission on restore jobs")
        return self._form_and_start(request, RestoreForm(request.POST or None), "Start a restore")

    @admin.action(description="Restore again to the same target…", permissions=["start"])
    def restore_again(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(request, "select exactly one restore job", level="error")
            return None
        job = queryset.get()
        initial = {"kind": job.target_kind, "value": job.target_value, "exclusive": job.exclusive,
                   "timeline": job.target_timeline, "backup": job.requested_backup_id}
        form = RestoreForm(request.POST if "apply" in request.POST else None, initial=initial)
        return self._form_and_start(request, form, f"Restore again to {job.target_description}",
                                    queryset=queryset, action="restore_again")
