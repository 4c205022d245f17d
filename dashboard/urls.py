from django.contrib.auth import views as auth_views
from django.urls import path

from dashboard import api, metrics, security, views

app_name = "dashboard"
urlpatterns = [
    path("", views.overview, name="overview"),
    path("login/", security.ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="dashboard:login"), name="logout"),
    path("overview.json", views.overview_json, name="overview_json"),
    path("timeline/", views.timeline_page, name="timeline"),
    path("servers/", views.servers_page, name="servers"),
    path("backups/", views.backups, name="backups"),
    path("backups/start/", views.backup_start, name="backup_start"),
    path("backups/<int:pk>/", views.backup_detail, name="backup"),
    path("backups/<int:pk>/pin/", views.backup_pin, name="backup_pin"),
    path("restores/", views.restores, name="restores"),
    path("restores/new/", views.restore_new, name="restore_new"),
    path("restores/start/", views.restore_start, name="restore_start"),
    path("restores/<int:pk>/", views.restore_detail, name="restore"),
    path("chaos/", views.chaos_runs, name="chaos_runs"),
    path("chaos/start/", views.chaos_start, name="chaos_start"),
    path("chaos/<int:pk>/", views.chaos_detail, name="chaos"),
    path("jobs/<str:kind>/<int:pk>.json", views.job_json, name="job_json"),
    path("jobs/<str:kind>/<int:pk>/cancel/", views.job_cancel, name="job_cancel"),
    path("jobs/<str:kind>/<int:pk>/log.txt", views.job_log, name="job_log"),
    # scripts/pitr restore|backup (pitrsite/client.py): token only
    path("api/commands/<str:name>", api.command, name="api_command"),
    path("api/jobs/<str:kind>/<int:pk>", api.job, name="api_job"),
    path("api/jobs/<str:kind>/<int:pk>/cancel", api.job_cancel, name="api_job_cancel"),
    path("metrics", metrics.metrics_view, name="metrics"),  # Prometheus scrapes /metrics
]
