from django.apps import AppConfig
from django.core import checks
from django.db.models.signals import post_migrate


class BrokerConfig(AppConfig):
    name = "broker"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported once the app registry is ready: these modules import the models.
        from broker.admin.roles import sync_after_migrate
        from broker.refresh import timing

        checks.register(timing.check_timing)
        # After the auth app has created this app's permissions (it connects first).
        post_migrate.connect(sync_after_migrate, sender=self, dispatch_uid="broker-auditor")
