from django.apps import AppConfig


class WalcatalogConfig(AppConfig):
    name = "walcatalog"
    verbose_name = "WAL catalog"
