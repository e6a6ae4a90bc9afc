from django.apps import AppConfig
from django.core import checks


class BrokerConfig(AppConfig):
    name = "broker"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from broker import refresh

        checks.register(refresh.check_timing)
