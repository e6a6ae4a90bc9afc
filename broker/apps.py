from django.apps import AppConfig
from django.core import checks
from django.db.models.signals import post_migrate


class BrokerConfig(AppConfig):
    name = "broker"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from broker import refresh

        checks.register(refresh.check_timing)
        from broker.admin_roles import sync_after_migrate

        # After the auth app has created this app's permissions (it connects first).
        post_migrate.connect(sync_after_migrate, sender=self, dispatch_uid="broker-auditor")
