"""Admin for the catalog: looked at, never edited by hand; backups started from here go to Celery."""
from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.defaultfilters import filesizeformat

from dashboard.admin_tools import JOB_FIELDS, JobAdmin, ReadOnlyAdmin
from dashboard.forms import BackupForm, RestoreForm
from walcatalog import walnames
from walcatalog.models import BaseBackup, RestorePoint, StorageCopy, Timeline, WalSegment


def _lsn(value: int | None) -> str:
    return walnames.format_lsn(value) if value is not None else "—"


@admin.register(Timeline)
class TimelineAdmin(ReadOnlyAdmin):
    list_display = ("tli", "parent_tli", "switch_lsn_text", "first_seen_at")
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
    readonly_fields = ("file_name", "timeline", "segno", "start_lsn_text", "end_lsn_text", "size", "is_partial", "sha256",
                       "first_commit_at", "last_commit_at", "last_commit_lsn_text", "commit_count", "scanned_to_text",
                       "in_local_archive", "indexed_at")
    fields = readonly_fields

    @admin.display(description="size", ordering="size")
    def size_text(self, seg: WalSegment) -> str:
        return filesizeformat(seg.size)

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
    list_display = ("label", "state", "progress", "current_step", "compression", "timeline", "stop_lsn_text", "stop_time",
                    "sizes", "manifest_verified", "trigger", "created_at")
    list_filter = ("state", "compression", "manifest_verified", "trigger", "timeline")
    search_fields = ("label", "error")
    date_hierarchy = "created_at"
    actions = ("start_backup_like", "restore_from")
    readonly_fields = ("label", "compression", "path", "timeline", "start_lsn_text", "stop_lsn_text", "start_time",
                       "stop_time", "size_raw", "size_stored", "manifest_verified", "segment_size", "restorable",
                       "progress", *JOB_FIELDS)
    fields = readonly_fields

    @admin.display(description="size raw / stored")
    def sizes(self, backup: BaseBackup) -> str:
        if backup.size_raw is None:
            return "—"
        return f"{filesizeformat(backup.size_raw)} / {filesizeformat(backup.size_stored or 0)}"

    @admin.display(description="offered for restore", boolean=True)
    def restorable(self, backup: BaseBackup) -> bool:
        return backup.restorable

    def start_view(self, request: HttpRequest) -> HttpResponse:
        from dashboard import actions

        if not self.has_start_permission(request):
            raise PermissionDenied("starting backups needs the add permission on base backups")
        form = BackupForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            done = self.try_start(request, lambda: actions.start_backup(form.cleaned_data["compression"], "admin"),
                                  "backup")
            if isinstance(done, HttpResponse):
                return done
            return self.form_page(request, "Start a backup", form, error=str(done), code=400)
        return self.form_page(request, "Start a backup", form, note="pg_basebackup of the primary, queued to Celery.")

    @admin.action(description="Start a new backup with the same compression", permissions=["start"])
    def start_backup_like(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        from dashboard import actions

        compression = queryset.order_by("-created_at").first().compression
        done = self.try_start(request, lambda: actions.start_backup(compression, "admin"), "backup")
        if not isinstance(done, HttpResponse):
            self.message_user(request, str(done), level="error")
            return None
        return done

    @admin.action(description="Restore from the selected backup…", permissions=["start"])
    def restore_from(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        from dashboard import actions
        from dashboard.views import restore_target

        if queryset.count() != 1:
            self.message_user(request, "select exactly one backup to restore from", level="error")
            return None
        backup = queryset.get()
        if not backup.restorable:
            self.message_user(request, f"backup {backup.label} is not offered for restore (state {backup.state}, "
                                       f"manifest verified: {'yes' if backup.manifest_verified else 'no'})", level="error")
            return None
        form = RestoreForm(request.POST if "apply" in request.POST else None, initial={"backup": backup.pk})
        title = f"Restore from {backup.label}"
        if "apply" in request.POST and form.is_valid():
            done = self.try_start(request, lambda: actions.start_restore(restore_target(form.cleaned_data), "admin"),
                                  "restore")
            if isinstance(done, HttpResponse):
                return done
            return self.form_page(request, title, form, queryset=queryset, action="restore_from", error=str(done), code=400)
        return self.form_page(request, title, form, queryset=queryset, action="restore_from",
                              note="Choose the target; the planner checks it against the catalog before anything is queued.")
