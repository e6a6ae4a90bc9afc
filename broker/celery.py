"""The Celery application shared by the worker and beat (`celery -A broker worker|beat`)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "broker.settings")

app = Celery("broker")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Tasks that live beside their concern rather than in a tasks module.
app.autodiscover_tasks(related_name="audit")
