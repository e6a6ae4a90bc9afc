"""Liveness and readiness probes for load balancers and orchestrators."""

from __future__ import annotations

import logging
import threading

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from broker.infra.redis_connection import redis_client

log = logging.getLogger(__name__)

# What the last probe in this process found (None before the first): a change is logged
# once, not every probe (an orchestrator probes every few seconds).
_last_failures: dict[str, str] | None = None
_last_lock = threading.Lock()


def _log_change(failures: dict[str, str]) -> None:
    """ERROR when the process becomes unready (or fails differently), INFO when it is
    ready again; nothing while the state stays the same."""
    global _last_failures
    with _last_lock:
        previous, _last_failures = _last_failures, failures
    if failures == (previous or {}):
        return
    if failures:
        summary = ", ".join(f"{name} {error}" for name, error in sorted(failures.items()))
        log.error("not ready: %s", summary, extra={"state": "unready"})
    else:
        log.info("ready again", extra={"state": "ready"})


@require_GET
@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving requests; touches nothing else."""
    return JsonResponse({"status": "ok"})


@require_GET
@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """Ready when the database and Redis both answer; 503 naming what failed otherwise."""
    checks: dict[str, str] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        redis_client().ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    failures = {name: value for name, value in checks.items() if value != "ok"}
    _log_change(failures)
    ready = not failures
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", **checks}, status=200 if ready else 503
    )
