"""The recommended production configuration of the web process (gunicorn reads this file
from its working directory by default): `gunicorn broker.wsgi -b 127.0.0.1:8000`, behind nginx
(deploy/nginx.conf: slow clients must never reach gunicorn's threads).

Threaded workers (gthread): a request waiting on another process's single-flight refresh
(up to 2 x BROKER_PROVIDER_TIMEOUT) blocks one thread, not a whole process, and holds no
database connection meanwhile (broker.refresh.lock), so many threads share a small pool of
connections (BROKER_DB_POOL_MAX_SIZE per process). Sizing: docs/operations.md.
"""

import os

from broker.ops.logging_config import logging_settings

wsgi_app = "broker.wsgi"
worker_class = "gthread"
# Processes: one per core (each runs `threads` requests at once).
workers = int(os.environ.get("WEB_CONCURRENCY", os.cpu_count() or 1))
# Threads: every caller waiting on a refresh in flight holds one (and no database
# connection). A process takes connections beyond its threads, and a request that waits for
# a thread is read only after the refresh ended: a force_refresh then refreshes again. The
# processes do not share a burst evenly, so each needs threads for the whole burst of
# callers of one grant (measured with benchmarks/refresh_waiters.py: benchmarks/README.md,
# "Figures behind the code"). Threads start only when requests need them; idle ones cost
# neither CPU nor database connections.
threads = int(os.environ.get("GUNICORN_THREADS", "256"))
# Longest request: waiting 2 x 10 s for another refresh, then a refresh of its own.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 30
# Behind a proxy that keeps connections open.
keepalive = 5
# gunicorn's own lines (starting, workers booted or killed) in the broker's format
# (LOG_FORMAT=json: one JSON object per line) and through its redaction, like every other
# line of the process. Its access log stays below the level: the broker logs one line per
# request itself (broker.ops.logging_config), with the request id and client address.
accesslog = None
logconfig_dict = logging_settings(
    os.environ.get("LOG_LEVEL", "INFO"), os.environ.get("LOG_FORMAT", "plain")
)
logconfig_dict["loggers"] |= {
    "gunicorn.error": {"handlers": [], "level": "INFO", "propagate": True},
    "gunicorn.access": {"handlers": [], "level": "WARNING", "propagate": True},
}
# No control socket: its default path is shared by every gunicorn of the same user.
control_socket_disable = True
