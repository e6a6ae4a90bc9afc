"""The Celery application shared by the worker and beat (`celery -A broker worker|beat`)."""

import logging.config
import os
from typing import Any

import click
from celery import Celery
from celery.signals import setup_logging
from click.core import ParameterSource
from django.conf import settings

from broker.ops.logging_config import connect_task_logging, logging_settings
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


def command_line_log_level() -> str | None:
    """The level given with `-l/--loglevel` on the worker's or beat's command line, or None
    when it was left out (Celery then passes its own default, WARNING)."""
    context = click.get_current_context(silent=True)
    if context is None or context.get_parameter_source("loglevel") in (
        None,
        ParameterSource.DEFAULT,
    ):
        return None
    return logging.getLevelName(context.params["loglevel"])


@setup_logging.connect
def configure_logging(**kwargs: Any) -> None:
    """The worker and beat log as the web does (LOG_LEVEL, default INFO; LOG_FORMAT;
    redaction): with a receiver of this signal Celery leaves logging alone, where its
    default WARNING would hide the one line per task run. An explicit `-l` still wins."""
    level = command_line_log_level() or settings.LOG_LEVEL
    logging.config.dictConfig(logging_settings(level, settings.LOG_FORMAT))
