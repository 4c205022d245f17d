from django.contrib import admin
from django.urls import include, path

admin.autodiscover()  # SimpleAdminConfig (settings.INSTALLED_APPS): the admin loads with the URLs only
admin.site.site_header = "pitrsite administration"
admin.site.site_title = "pitrsite"
admin.site.index_title = "Catalog and jobs"
admin.site.site_url = "/"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("dashboard.urls")),
]
