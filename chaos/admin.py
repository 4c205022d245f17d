"""Admin for chaos runs: rows are written by chaos.run; staff start runs here (queued to Celery)."""
from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from chaos.models import ChaosRun
from dashboard.admin_tools import JOB_FIELDS, JobAdmin


@admin.register(ChaosRun)
class ChaosRunAdmin(JobAdmin):
    start_label = "Start a chaos run"
    list_display = ("id", "state", "verdict", "progress", "current_step", "writes_count", "unknown_count",
                    "events_count", "passed_of", "trigger", "created_at")
    list_filter = ("state", "verdict", "trigger")
    search_fields = ("summary", "error", "run_dir")
    date_hierarchy = "created_at"
    readonly_fields = ("verdict", "summary", "parameters", "writes_count", "unknown_count", "writer_ids", "backup",
                       "run_dir", "events", "verifications", "progress", *JOB_FIELDS)
    fields = readonly_fields

    @admin.display(description="actions")
    def events_count(self, run: ChaosRun) -> int:
        return len(run.events)

    @admin.display(description="exact moments")
    def passed_of(self, run: ChaosRun) -> str:
        return f"{run.passed_count}/{len(run.verifications)}" if run.verifications else "—"

    actions = ("run_again",)

    def _chaos_form_and_start(self, request: HttpRequest, form, title: str, **page) -> HttpResponse:
        from dashboard import actions

        if form.is_bound and form.is_valid():
            done = self.try_start(request, lambda: actions.start_chaos(form.params(), "admin"), "chaos run")
            if isinstance(done, HttpResponse):
                return done
            return self.form_page(request, title, form, error=str(done), code=400, **page)
        return self.form_page(request, title, form, code=400 if form.is_bound else 200,
                              note="Writers insert into test_data while failures are injected; then the restore "
                                   "target is restored to logged moments and compared row for row.", **page)

    def start_view(self, request: HttpRequest) -> HttpResponse:
        from dashboard.forms import ChaosForm

        if not self.has_start_permission(request):
            raise PermissionDenied("starting chaos runs needs the add permission on chaos runs")
        return self._chaos_form_and_start(request, ChaosForm(request.POST or None), "Start a chaos run")

    @admin.action(description="Run again with the same parameters…", permissions=["start"])
    def run_again(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        from dashboard.forms import ChaosForm

        if queryset.count() != 1:
            self.message_user(request, "select exactly one chaos run", level="error")
            return None
        form = ChaosForm(request.POST if "apply" in request.POST else None,
                         initial=ChaosForm.initial_from(queryset.get().parameters))
        return self._chaos_form_and_start(request, form, f"Run chaos run #{queryset.get().pk} again",
                                          queryset=queryset, action="run_again")
