"""Prometheus metrics at /metrics, and the helpers other modules call to count things.

Counters live in Redis, not in process memory. The broker runs as many web and worker
processes on many hosts; prometheus_client's multiprocess mode only merges processes that
share one directory on one host, and a worker's counts would need a scrape of that worker.
With Redis (already required, HINCRBY is atomic) any web process's /metrics shows the
totals of the whole deployment. Gauges (grants by status, queue depth) are computed at
scrape time. Counting never fails the caller: if Redis is down the count is lost, logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Iterator

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.client import Pipeline

from broker.infra.client_address import client_ip
from broker.infra.redis_connection import redis_client, redis_key
from broker.models import Grant

logger = logging.getLogger(__name__)

# The hashes counted in Redis, shared by every process (named by `metrics_key`).
REFRESHES = "refreshes"
REFRESH_SECONDS = "refresh_seconds"
TOKEN_ISSUES = "token_issues"


def metrics_key(name: str) -> str:
    return redis_key("metrics", name)


SEPARATOR = "\x1f"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, float("inf"))
# Kombu's Redis transport keeps one list per queue and priority step: "celery",
# "celery\x06\x163", ...
CELERY_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def _bucket_field(seconds: float) -> str:
    for bound in LATENCY_BUCKETS:
        if seconds <= bound:
            return f"le:{bound}"
    return "le:inf"


def count_refresh(outcome: str, seconds: float) -> None:
    """One refresh attempt ended with `outcome` (e.g. success, failure, dead) after `seconds`."""
    try:
        pipe = redis_client().pipeline(transaction=False)
        queue_refresh(pipe, outcome, seconds)
        pipe.execute()
    except Exception as exc:
        logger.warning("metrics: refresh not counted: %s", type(exc).__name__)


def queue_refresh(pipe: Pipeline, outcome: str, seconds: float) -> None:
    """`count_refresh` added to a pipeline the caller executes (four results)."""
    pipe.hincrby(metrics_key(REFRESHES), outcome, 1)
    pipe.hincrby(metrics_key(REFRESH_SECONDS), _bucket_field(seconds), 1)
    pipe.hincrbyfloat(metrics_key(REFRESH_SECONDS), "sum", seconds)
    pipe.hincrby(metrics_key(REFRESH_SECONDS), "count", 1)


def token_issue_field(service: str, outcome: str) -> str:
    """The TOKEN_ISSUES field that counts `service`'s answers with `outcome`."""
    return f"{service}{SEPARATOR}{outcome}"


def count_token_issue(service: str, outcome: str) -> None:
    """`service` (client id) was served a token (`outcome` issued, or exchanged for a
    user's token) or a signature (signed)."""
    try:
        redis_client().hincrby(metrics_key(TOKEN_ISSUES), token_issue_field(service, outcome), 1)
    except Exception as exc:
        logger.warning("metrics: token issue not counted: %s", type(exc).__name__)


def queue_token_issue(pipe: Pipeline, service: str, outcome: str) -> None:
    """`count_token_issue` added to a pipeline the caller executes (one result)."""
    pipe.hincrby(metrics_key(TOKEN_ISSUES), token_issue_field(service, outcome), 1)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class BrokerCollector(Collector):
    """Reads the shared counters from Redis and computes the gauges, at each scrape."""

    def collect(self) -> Iterator[Metric]:
        grants = GaugeMetricFamily("broker_grants", "Grants by status", labels=["status"])
        counts = dict(Grant.objects.values_list("status").annotate(n=Count("pk")))
        for status in Grant.Status.values:
            grants.add_metric([status], counts.get(status, 0))
        yield grants

        client = redis_client()
        refreshes = CounterMetricFamily(
            "broker_refreshes", "Grant refreshes by outcome", labels=["outcome"]
        )
        for outcome, n in sorted(client.hgetall(metrics_key(REFRESHES)).items()):
            refreshes.add_metric([_text(outcome)], int(n))
        yield refreshes

        issues = CounterMetricFamily(
            "broker_token_issues",
            "Tokens (outcome issued, or exchanged: RFC 8693) and OAuth 1.0a signatures (signed) "
            "served, by service",
            labels=["service", "outcome"],
        )
        for key, n in sorted(client.hgetall(metrics_key(TOKEN_ISSUES)).items()):
            service, _, outcome = _text(key).partition(SEPARATOR)
            issues.add_metric([service, outcome], int(n))
        yield issues

        raw = {_text(k): _text(v) for k, v in client.hgetall(metrics_key(REFRESH_SECONDS)).items()}
        cumulative = 0
        buckets = []
        for bound in LATENCY_BUCKETS:
            field = "le:inf" if bound == float("inf") else f"le:{bound}"
            cumulative += int(raw.get(field, 0))
            buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
        latency = HistogramMetricFamily(
            "broker_refresh_duration_seconds", "Time taken by refreshes (upstream call included)"
        )
        latency.add_metric([], buckets, sum_value=float(raw.get("sum", 0)))
        yield latency

        broker = redis_client(settings.REDIS_CELERY_QUEUE_URL)
        queue = settings.CELERY_TASK_DEFAULT_QUEUE
        depth = sum(int(broker.llen(queue + s)) for s in CELERY_PRIORITY_SUFFIXES)
        yield GaugeMetricFamily("broker_celery_queue_depth", "Tasks waiting in the queue", depth)


def scrape_allowed(request: HttpRequest) -> bool:
    """Every configured check must pass; with none configured, nobody may scrape."""
    token = settings.BROKER_METRICS_TOKEN
    networks = settings.BROKER_METRICS_ALLOWED_NETWORKS
    if not token and not networks:
        return False
    if token:
        presented = request.headers.get("Authorization", "")
        if not hmac.compare_digest(presented.encode(), f"Bearer {token}".encode()):
            return False
    if networks:
        try:
            peer = ipaddress.ip_address(client_ip(request) or "")
        except ValueError:
            return False
        if not any(peer in ipaddress.ip_network(n, strict=False) for n in networks):
            return False
    return True


@require_GET
@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not scrape_allowed(request):
        return HttpResponse("forbidden\n", status=403, content_type="text/plain")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
