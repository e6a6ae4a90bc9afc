"""WSGI entry point: `gunicorn broker.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

from broker.ops.startup import GUNICORN_APP_LOAD_ERROR, configuration_errors_exit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "broker.settings")
with configuration_errors_exit(GUNICORN_APP_LOAD_ERROR):
    application = get_wsgi_application()
    # Django imports the URL configuration, and with it the views and the API's schemas, at
    # the first request: the first requests a new worker takes (at every start and reload)
    # all waited for it (benchmarks/README.md, "A new worker's first requests"). Here it
    # happens before the worker accepts a connection.
    get_resolver().url_patterns  # noqa: B018
