"""The Celery application shared by the worker and beat (`celery -A broker worker|beat`)."""

import os
from typing import Any

from celery import Celery
from django.conf import settings

from broker.ops.logging_config import connect_task_logging
from broker.ops.startup import configuration_errors_exit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "broker.settings")

app = Celery("broker")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
connect_task_logging()


@app.on_configure.connect
def load_django_settings(sender: Celery, **kwargs: Any) -> None:
    """Celery reads its configuration while parsing its command line; a settings error
    there ends the process with one line rather than a traceback through click."""
    with configuration_errors_exit():
        settings.INSTALLED_APPS  # noqa: B018 (loads the settings)
