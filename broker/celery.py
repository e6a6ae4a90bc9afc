"""The Celery application shared by the worker and beat (`celery -A broker worker|beat`)."""

import os

from celery import Celery

from broker.logging_config import connect_task_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "broker.settings")

app = Celery("broker")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
connect_task_logging()
