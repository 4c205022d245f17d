from django.contrib import admin
from django.urls import include, path

from pitrsite import metrics

admin.site.site_header = "pitrsite administration"
admin.site.site_title = "pitrsite"
admin.site.index_title = "Catalog and jobs"
admin.site.site_url = "/"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("", include("dashboard.urls")),
]
