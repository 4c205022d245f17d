from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _demo_server(sender, **kwargs) -> None:
    """The demo fleet is always a server of the catalog: after migrate, and after a flush (tests)."""
    from fleet import servers

    servers.forget_cached()
    servers.demo()


class FleetConfig(AppConfig):
    name = "fleet"
    verbose_name = "Fleet"

    def ready(self) -> None:
        post_migrate.connect(_demo_server, sender=self)
