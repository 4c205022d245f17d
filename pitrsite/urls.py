from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

admin.autodiscover()  # SimpleAdminConfig (settings.INSTALLED_APPS): the admin loads with the URLs only
admin.site.site_header = "pitrsite administration"
admin.site.site_title = "pitrsite"
admin.site.index_title = "Catalog and jobs"
admin.site.site_url = "/"

urlpatterns = [
    # One login page for both, so failed admin logins are throttled too.
    path("admin/login/", RedirectView.as_view(pattern_name="dashboard:login", query_string=True)),
    path("admin/", admin.site.urls),
    path("favicon.ico", RedirectView.as_view(url=settings.STATIC_URL + "dashboard/favicon.svg", permanent=True)),
    path("", include("dashboard.urls")),
]
