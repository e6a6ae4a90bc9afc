"""WSGI entry point: `gunicorn broker.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

from broker.ops.startup import GUNICORN_APP_LOAD_ERROR, configuration_errors_exit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "broker.settings")
with configuration_errors_exit(GUNICORN_APP_LOAD_ERROR):
    application = get_wsgi_application()
