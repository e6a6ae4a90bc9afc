"""How every entry point (manage.py, Celery, WSGI) reports a configuration error.

A missing or malformed setting raises `ImproperlyConfigured` while the settings load; the
operator gets one line naming the variable on stderr, not the traceback of the import
machinery that happened to load them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.exceptions import ImproperlyConfigured

CONFIGURATION_ERROR = 2
# gunicorn's "App failed to load": its master stops instead of respawning the worker.
GUNICORN_APP_LOAD_ERROR = 4


@contextmanager
def configuration_errors_exit(code: int = CONFIGURATION_ERROR) -> Iterator[None]:
    try:
        yield
    except ImproperlyConfigured as exc:
        print(f"ImproperlyConfigured: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(code) from None
