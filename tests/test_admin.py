"""Admin: every model registered and browsable; start actions queue to Celery; denials."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from restores.models import RestoreJob
from walcatalog.models import BaseBackup, WalSegment
from tests.dashboard_data import make_backup, make_restore, make_segments


@pytest.fixture
def superuser(db) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.invalid", "x"))
    return client


@pytest.fixture
def catalog(db):
    start = timezone.now() - timedelta(hours=1)
    make_segments(1, range(1, 30), start, timedelta(minutes=1), partial_last=True)
    backup = make_backup(1, 3, start + timedelta(minutes=3))
    job = make_restore(backup=backup, progress_done=1, progress_total=4)
    return {"backup": backup, "restore": job}


def test_every_model_is_registered():
    from django.apps import apps

    ours = [m for m in apps.get_models() if m._meta.app_label in ("walcatalog", "restores", "fleet")]
    assert ours and all(admin.site.is_registered(m) for m in ours), [m for m in ours if not admin.site.is_registered(m)]


def test_changelists_and_change_pages_render(superuser, catalog):
    from django.apps import apps

    for model in [m for m in apps.get_models() if m._meta.app_label in ("walcatalog", "restores")]:
        opts = model._meta
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        assert superuser.get(url).status_code == 200, url
        assert superuser.get(url, {"q": "0000"}).status_code == 200, url
        obj = model.objects.first()
        if obj:
            assert superuser.get(reverse(f"admin:{opts.app_label}_{opts.model_name}_change",
                                         args=[obj.pk])).status_code == 200


def test_job_list_shows_progress_bar(superuser, catalog):
    html = superuser.get(reverse("admin:restores_restorejob_changelist")).content.decode()
    assert "width:25.0%" in html
    html = superuser.get(reverse("admin:walcatalog_basebackup_changelist")).content.decode()
    assert "width:100.0%" in html and "Start a backup" in html


def test_catalog_is_read_only(superuser, catalog):
    seg = WalSegment.objects.first()
    assert superuser.get(reverse("admin:walcatalog_walsegment_add")).status_code == 403
    response = superuser.post(reverse("admin:walcatalog_walsegment_change", args=[seg.pk]), {"size": 1})
    assert response.status_code == 403
    WalSegment.objects.get(pk=seg.pk, size=seg.size)


def test_filters_and_search(superuser, catalog):
    url = reverse("admin:walcatalog_walsegment_changelist")
    html = superuser.get(url, {"is_partial__exact": "1"}).content.decode()
    assert "00000001000000000000001D.partial" in html and "000000010000000000000002<" not in html
    link = reverse("admin:restores_restorejob_change", args=[catalog["restore"].pk])
    changelist = reverse("admin:restores_restorejob_changelist")
    assert link not in superuser.get(changelist, {"state__exact": "failed"}).content.decode()
    assert link in superuser.get(changelist, {"state__exact": "running"}).content.decode()
    assert link in superuser.get(changelist, {"q": "0/5000000"}).content.decode()


def test_start_backup_page_queues_to_celery(superuser, catalog, broker, django_capture_on_commit_callbacks):
    url = reverse("admin:walcatalog_basebackup_start")
    assert "Compression" in superuser.get(url).content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = superuser.post(url, {"compression": "none"})
    backup = BaseBackup.objects.get(trigger="admin")
    assert response.status_code == 302 and response["Location"].endswith(f"/{backup.pk}/change/")
    assert backup.compression == "none" and broker() == [("walcatalog.tasks.run_backup", [backup.pk])]


def test_start_backup_action(superuser, catalog, broker, django_capture_on_commit_callbacks):
    url = reverse("admin:walcatalog_basebackup_changelist")
    with django_capture_on_commit_callbacks(execute=True):
        superuser.post(url, {"action": "start_backup_like", "_selected_action": [catalog["backup"].pk]})
    new = BaseBackup.objects.get(trigger="admin")
    assert new.compression == catalog["backup"].compression
    assert broker() == [("walcatalog.tasks.run_backup", [new.pk])]


def test_restore_action_shows_target_form_then_planner_message(superuser, catalog, broker):
    url = reverse("admin:walcatalog_basebackup_changelist")
    form = superuser.post(url, {"action": "restore_from", "_selected_action": [catalog["backup"].pk]})
    assert form.status_code == 200
    html = form.content.decode()
    assert f"Restore from {catalog['backup'].label}" in html and 'name="kind"' in html and 'value="apply"' not in html
    # a malformed target comes back with the planner's message and nothing is queued
    response = superuser.post(url, {"action": "restore_from", "_selected_action": [catalog["backup"].pk], "apply": "1",
                                    "kind": "time", "value": "2026-01-01 00:00", "backup": catalog["backup"].pk})
    assert response.status_code == 400 and "has no time zone" in response.content.decode()
    assert RestoreJob.objects.count() == 1 and broker() == []


def test_restore_again_action_prefills_target(superuser, catalog):
    url = reverse("admin:restores_restorejob_changelist")
    html = superuser.post(url, {"action": "restore_again",
                                "_selected_action": [catalog["restore"].pk]}).content.decode()
    assert 'value="0/5000000"' in html and "Restore again to lsn 0/5000000" in html


def test_start_restore_page(superuser, catalog):
    html = superuser.get(reverse("admin:restores_restorejob_start")).content.decode()
    assert 'name="kind"' in html and "Start a restore" in html


def test_staff_without_permission_cannot_start(db, catalog, broker):
    client = Client()
    user = User.objects.create_user("staff", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_basebackup"))
    client.force_login(user)
    changelist = client.get(reverse("admin:walcatalog_basebackup_changelist")).content.decode()
    assert "Start a backup" not in changelist and "start_backup_like" not in changelist
    assert client.post(reverse("admin:walcatalog_basebackup_start"), {"compression": "gzip"}).status_code == 403
    assert not BaseBackup.objects.filter(trigger="admin").exists() and broker() == []


def test_non_staff_gets_login_page(db):
    client = Client()
    client.force_login(User.objects.create_user("viewer", password="x"))
    response = client.post(reverse("admin:walcatalog_basebackup_start"), {"compression": "gzip"})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_chaos_run_again_action_prefills_parameters(superuser, db):
    from tests.dashboard_data import make_chaos_run

    run = make_chaos_run()
    url = reverse("admin:chaos_chaosrun_changelist")
    assert superuser.get(url).status_code == 200
    html = superuser.post(url, {"action": "run_again", "_selected_action": [run.pk]}).content.decode()
    assert f"Run chaos run #{run.pk} again" in html and 'value="20-30"' in html and 'name="writers"' in html
    assert superuser.get(reverse("admin:chaos_chaosrun_start")).status_code == 200
    # an invalid interval comes back with the harness's own message; nothing is queued
    response = superuser.post(url, {"action": "run_again", "_selected_action": [run.pk], "apply": "1", "writers": 2,
                                    "duration": 30, "interval": "9-1", "restores": 1, "actions": ""})
    assert response.status_code == 400 and "need 0 &lt; MIN &lt;= MAX" in response.content.decode()


def test_server_check_and_remove_actions(superuser, no_fleet):
    """Staff check and remove servers in the admin as `server check` and `server remove` do."""
    from fleet import servers
    from fleet.models import Server

    sales = Server.objects.create(name="sales", kind="external", host="127.0.0.1", port=1, restore_port=2)
    with servers.using(sales):
        make_backup(1, 3, timezone.now())
    url = reverse("admin:fleet_server_changelist")

    def act(action: str) -> str:
        response = superuser.post(url, {"action": action, "_selected_action": [sales.pk]}, follow=True)
        return " ".join(str(m) for m in response.context["messages"])

    assert "sales: FAIL cannot connect to sales (primary) on 127.0.0.1:1" in act("check_servers")
    # Worded for the admin: its own action, not the command's --forget.
    assert "sales holds 1 backup(s): remove it with the action that forgets its catalog" in act("remove")
    assert Server.objects.filter(name="sales").exists()
    assert "server sales removed" in act("remove_forgetting_catalog")
    assert not Server.objects.filter(name="sales").exists() and not BaseBackup.all_servers.filter(server=sales.pk)
