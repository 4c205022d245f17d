"""The admin of every app: catalog rows, backups, restores and chaos runs.

Here, at the top layer, because it is user interface: it starts jobs through dashboard.actions with the
dashboard's forms, and the apps below it never import the dashboard. Rows are looked at, never edited by
hand; jobs started here go to Celery.
"""
from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.defaultfilters import filesizeformat

from chaos.models import ChaosRun
from dashboard import actions
from dashboard.admin_tools import JOB_FIELDS, JobAdmin, ReadOnlyAdmin, user_of
from dashboard.forms import BackupForm, ChaosForm, RestoreForm, restore_target
from dashboard.templatetags.pitr import times
from dashboard.words import web_message
from fleet.models import Server
from pitrsite.errors import PitrError
from restores.models import RestoreJob
from walcatalog import walnames
from walcatalog.models import BaseBackup, RestorePoint, StorageCopy, Timeline, WalSegment


def _lsn(value: int | None) -> str:
    return walnames.format_lsn(value) if value is not None else "—"


@admin.register(Timeline)
class TimelineAdmin(ReadOnlyAdmin):
    list_display = ("tli", "parent_tli", "switch_lsn_text", "first_seen_at")

    @admin.display(description="switch LSN", ordering="switch_lsn")
    def switch_lsn_text(self, timeline: Timeline) -> str:
        return _lsn(timeline.switch_lsn)
    search_fields = ("tli",)
    readonly_fields = ("tli", "parent_tli", "switch_lsn_text", "history", "history_sha256", "first_seen_at")
    exclude = ("switch_lsn",)


@admin.register(WalSegment)
class WalSegmentAdmin(ReadOnlyAdmin):
    list_display = ("file_name", "timeline", "segno", "start_lsn_text", "end_lsn_text", "size_text", "is_partial",
                    "commit_count", "first_commit_at", "last_commit_at", "in_local_archive", "indexed_at")
    list_filter = ("timeline", "is_partial", "in_local_archive")
    search_fields = ("name",)
    date_hierarchy = "last_commit_at"
    list_per_page = 100
    show_full_result_count = False  # 100k rows: one COUNT is enough
    readonly_fields = ("file_name", "timeline", "segno", "start_lsn_text", "end_lsn_text", "size", "is_partial",
                       "sha256", "first_commit_at", "last_commit_at", "last_commit_lsn_text", "commit_count",
                       "scanned_to_text", "in_local_archive", "indexed_at")
    fields = readonly_fields

    @admin.display(description="size", ordering="size")
    def size_text(self, seg: WalSegment) -> str:
        return filesizeformat(seg.size)

    @admin.display(description="start LSN", ordering="start_lsn")
    def start_lsn_text(self, seg: WalSegment) -> str:
        return _lsn(seg.start_lsn)

    @admin.display(description="end LSN", ordering="end_lsn")
    def end_lsn_text(self, seg: WalSegment) -> str:
        return _lsn(seg.end_lsn)

    @admin.display(description="last commit LSN")
    def last_commit_lsn_text(self, seg: WalSegment) -> str:
        return _lsn(seg.last_commit_lsn)

    @admin.display(description="scanned to")
    def scanned_to_text(self, seg: WalSegment) -> str:
        return _lsn(seg.scanned_to)


@admin.register(RestorePoint)
class RestorePointAdmin(ReadOnlyAdmin):
    list_display = ("name", "timeline", "lsn_text", "segment")
    list_filter = ("timeline",)
    search_fields = ("name",)
    readonly_fields = ("name", "timeline", "lsn_text", "segment")
    fields = readonly_fields

    @admin.display(description="LSN", ordering="lsn")
    def lsn_text(self, point: RestorePoint) -> str:
        return _lsn(point.lsn)


@admin.register(StorageCopy)
class StorageCopyAdmin(ReadOnlyAdmin):
    list_display = ("key", "storage", "kind", "size_text", "uploaded_at", "verified_at")
    list_filter = ("storage", "kind")
    search_fields = ("key", "sha256")
    readonly_fields = ("kind", "storage", "key", "segment", "backup", "size", "sha256", "uploaded_at", "verified_at")
    fields = readonly_fields

    @admin.display(description="size", ordering="size")
    def size_text(self, copy: StorageCopy) -> str:
        return filesizeformat(copy.size)


@admin.register(BaseBackup)
class BaseBackupAdmin(JobAdmin):
    start_label = "Start a backup"
    list_display = ("label", "state", "progress", "current_step", "compression", "timeline", "stop_lsn_text",
                    "stop_time", "sizes", "manifest_verified", "who", "created_at")
    list_filter = ("state", "compression", "manifest_verified", "pinned", "trigger", "timeline")
    search_fields = ("label", "error")
    date_hierarchy = "created_at"
    actions = ("start_backup_like", "restore_from")
    readonly_fields = ("label", "compression", "path", "timeline", "start_lsn_text", "stop_lsn_text", "start_time",
                       "stop_time", "size_raw", "size_stored", "manifest_verified", "pinned", "segment_size",
                       "restorable", "progress", *JOB_FIELDS)
    fields = readonly_fields

    @admin.display(description="start LSN", ordering="start_lsn")
    def start_lsn_text(self, backup: BaseBackup) -> str:
        return _lsn(backup.start_lsn)

    @admin.display(description="stop LSN", ordering="stop_lsn")
    def stop_lsn_text(self, backup: BaseBackup) -> str:
        return _lsn(backup.stop_lsn)

    @admin.display(description="size raw / stored")
    def sizes(self, backup: BaseBackup) -> str:
        if backup.size_raw is None:
            return "—"
        return f"{filesizeformat(backup.size_raw)} / {filesizeformat(backup.size_stored or 0)}"

    @admin.display(description="offered for restore", boolean=True)
    def restorable(self, backup: BaseBackup) -> bool:
        return backup.restorable

    def start_view(self, request: HttpRequest) -> HttpResponse:

        if not self.has_start_permission(request):
            raise PermissionDenied("starting backups needs the add permission on base backups")
        form = BackupForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            done = self.try_start(
                request, lambda: actions.start_backup(form.cleaned_data["compression"], "admin", user_of(request)),
                                  "backup")
            if isinstance(done, HttpResponse):
                return done
            return self.form_page(request, "Start a backup", form, error=str(done), code=400)
        return self.form_page(request, "Start a backup", form, note="pg_basebackup of the primary, queued to Celery.")

    @admin.action(description="Start a new backup with the same compression", permissions=["start"])
    def start_backup_like(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:

        newest = queryset.order_by("-created_at").first()
        assert newest is not None  # an admin action runs on a non-empty selection
        compression = newest.compression
        done = self.try_start(request, lambda: actions.start_backup(compression, "admin", user_of(request)), "backup")
        if not isinstance(done, HttpResponse):
            self.message_user(request, str(done), level="error")
            return None
        return done

    @admin.action(description="Restore from the selected backup…", permissions=["start"])
    def restore_from(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:

        if queryset.count() != 1:
            self.message_user(request, "select exactly one backup to restore from", level="error")
            return None
        backup = queryset.get()
        if not backup.restorable:
            self.message_user(request, f"backup {backup.label} is not offered for restore (state {backup.state}, "
                                       f"manifest verified: {'yes' if backup.manifest_verified else 'no'})",
                              level="error")
            return None
        form = RestoreForm(request.POST if "apply" in request.POST else None, initial={"backup": backup.pk})
        title = f"Restore from {backup.label}"
        if "apply" in request.POST and form.is_valid():
            done = self.try_start(
                request, lambda: actions.start_restore(restore_target(form.cleaned_data), "admin", user_of(request)),
                                  "restore")
            if isinstance(done, HttpResponse):
                return done
            return self.form_page(request, title, form, queryset=queryset, action="restore_from", error=str(done),
                                  code=400)
        return self.form_page(request, title, form, queryset=queryset, action="restore_from",
                              note="Choose the target; the planner checks it against the catalog "
                                   "before anything is queued.")


# --- restores ---------------------------------------------------------------------------------------
@admin.register(RestoreJob)
class RestoreJobAdmin(JobAdmin):
    start_label = "Start a restore"
    list_display = ("id", "target", "state", "progress", "current_step", "backup", "replay_lsn_text",
                    "promoted_at", "final_lsn_text", "final_timeline", "who", "drill_verdict", "created_at")
    list_display_links = ("id", "target")
    list_filter = ("state", "target_kind", "exclusive", "trigger", "uses_partial", "source", "drill_verdict")
    search_fields = ("target_value", "error", "backup__label")
    list_select_related = ("backup",)
    date_hierarchy = "created_at"
    actions = ("restore_again",)
    readonly_fields = ("target", "target_kind", "target_value", "exclusive", "target_timeline", "backup",
                       "requested_backup_id", "plan", "wal_first", "wal_last", "wal_files", "uses_partial",
                       "target_lsn_text", "replay_lsn_text", "promoted_at", "final_lsn_text", "final_timeline",
                       "source", "progress", *JOB_FIELDS)
    fields = readonly_fields

    @admin.display(description="target")
    def target(self, job: RestoreJob) -> str:
        return times(job.target_description)  # a time target in the one displayed format

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

        if form.is_bound and form.is_valid():
            done = self.try_start(
                request, lambda: actions.start_restore(restore_target(form.cleaned_data), "admin", user_of(request)),
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
        return self._form_and_start(request, form, f"Restore again to {times(job.target_description)}",
                                    queryset=queryset, action="restore_again")


# --- chaos ------------------------------------------------------------------------------------------
@admin.register(ChaosRun)
class ChaosRunAdmin(JobAdmin):
    start_label = "Start a chaos run"
    list_display = ("id", "state", "verdict", "progress", "current_step", "writes_count", "unknown_count",
                    "events_count", "passed_of", "who", "created_at")
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

        if form.is_bound and form.is_valid():
            done = self.try_start(
                request, lambda: actions.start_chaos(form.params(), "admin", user_of(request)), "chaos run")
            if isinstance(done, HttpResponse):
                return done
            return self.form_page(request, title, form, error=str(done), code=400, **page)
        return self.form_page(request, title, form, code=400 if form.is_bound else 200,
                              note="Writers insert into test_data while failures are injected; then the restore "
                                   "target is restored to logged moments and compared row for row.", **page)

    def start_view(self, request: HttpRequest) -> HttpResponse:

        if not self.has_start_permission(request):
            raise PermissionDenied("starting chaos runs needs the add permission on chaos runs")
        return self._chaos_form_and_start(request, ChaosForm(request.POST or None), "Start a chaos run")

    @admin.action(description="Run again with the same parameters…", permissions=["start"])
    def run_again(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:

        if queryset.count() != 1:
            self.message_user(request, "select exactly one chaos run", level="error")
            return None
        form = ChaosForm(request.POST if "apply" in request.POST else None,
                         initial=ChaosForm.initial_from(queryset.get().parameters))
        return self._chaos_form_and_start(request, form, f"Run chaos run #{queryset.get().pk} again",
                                          queryset=queryset, action="run_again")


class ServerForm(forms.ModelForm):
    """Adding an external server checks what capture needs, as `server add` does; each failure one line."""

    class Meta:
        model = Server
        fields = ("name", "kind", "host", "port", "user", "dbname", "replication_user", "passfile", "slot_name",
                  "restore_port", "queue", "storage_prefix", "compression", "retention_keep_backups",
                  "retention_days")

    def clean(self):
        from fleet.checks import capturer_running, run_checks

        data = super().clean()
        if self.errors or data.get("kind") != "external":
            return data
        candidate = Server(**{k: v for k, v in data.items() if k in self.Meta.fields})
        candidate.pk = self.instance.pk
        candidate.slot_name = candidate.slot_name or f"pitr_{candidate.name.replace('-', '_')}"
        running = bool(self.instance.pk) and capturer_running(self.instance)
        failed = [c.line for c in run_checks(candidate, stop_at_failure=True, slot_owner_running=running) if not c.ok]
        if failed:
            raise forms.ValidationError(web_message(failed[0]))
        data["slot_name"] = candidate.slot_name
        return data


@admin.register(Server)
class ServerAdmin(admin.ModelAdmin):
    form = ServerForm
    list_display = ("name", "kind", "host", "port", "restore_port", "queue", "retired_at", "successor", "created_at")
    list_filter = ("kind", "queue")
    readonly_fields = ("retired_at", "successor")  # set by restore --as-new-primary only
    actions = ["check_servers", "remove", "remove_forgetting_catalog"]

    @admin.action(description="Check the selected servers (as `server check`)")
    def check_servers(self, request: HttpRequest, queryset: QuerySet) -> None:
        from fleet.checks import check_server

        for server in queryset:
            for found in check_server(server):
                self.message_user(request, f"{server.name}: {'ok' if found.ok else 'FAIL'} {web_message(found.line)}",
                                  messages.SUCCESS if found.ok else messages.ERROR)

    def _remove(self, request: HttpRequest, queryset: QuerySet, forget: bool) -> None:
        from fleet.external import remove_server

        for server in queryset:
            try:
                self.message_user(request, remove_server(server, forget=forget), messages.SUCCESS)
            except PitrError as exc:
                self.message_user(request, web_message(exc), messages.ERROR)

    @admin.action(description="Remove the selected servers (refused while they hold backups)",
                  permissions=["change"])
    def remove(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._remove(request, queryset, forget=False)

    @admin.action(description="Remove the selected servers and forget their catalog (no file is deleted)",
                  permissions=["change"])
    def remove_forgetting_catalog(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._remove(request, queryset, forget=True)

    def save_model(self, request: HttpRequest, obj: Server, form, change: bool) -> None:
        if not obj.managed:
            from fleet.capture import ensure_slot
            from fleet.external import ExternalDriver

            if not obj.restore_port:
                from fleet.management.commands.server import free_port

                obj.restore_port = free_port()
            driver = ExternalDriver(obj)
            try:
                with driver.connect(dbname="postgres") as conn:
                    self.message_user(request, ensure_slot(conn, obj.slot_name, driver.layout.archive))
            except PitrError as exc:  # saved all the same: `server check` and the Servers page say it is broken
                self.message_user(request, str(exc), messages.ERROR)
        super().save_model(request, obj, form, change)

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False  # `server remove` says what it keeps (files, the slot) and refuses while backups exist
