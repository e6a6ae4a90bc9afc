"""/healthz, /readyz and /metrics."""

from __future__ import annotations

import pytest
from django.test import override_settings

from broker.infra.redis_connection import redis_client
from broker.models import Grant
from broker.ops import metrics
from tests.factories import make_app, save_grant

CLOSED_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def clean_metrics():
    client = redis_client()
    client.delete(
        *(
            metrics.metrics_key(n)
            for n in (metrics.REFRESHES, metrics.REFRESH_SECONDS, metrics.TOKEN_ISSUES)
        )
    )
    yield


def test_healthz_answers_without_the_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_503_while_redis_is_unreachable_and_200_when_it_is_back(client):
    with override_settings(REDIS_URL=CLOSED_REDIS):
        down = client.get("/readyz")
    assert down.status_code == 503
    assert down.json()["redis"].startswith("error") and down.json()["database"] == "ok"
    back = client.get("/readyz")
    assert back.status_code == 200
    assert back.json() == {"status": "ok", "database": "ok", "redis": "ok"}


@pytest.mark.django_db
@override_settings(BROKER_METRICS_TOKEN="", BROKER_METRICS_ALLOWED_NETWORKS=[])
def test_metrics_are_refused_when_no_access_is_configured(client):
    assert client.get("/metrics").status_code == 403


@pytest.mark.django_db
@override_settings(BROKER_METRICS_TOKEN="scrape-token-1", BROKER_METRICS_ALLOWED_NETWORKS=[])
def test_metrics_need_the_bearer_token(client):
    assert client.get("/metrics").status_code == 403
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
    ok = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-1")
    assert ok.status_code == 200 and b"broker_grants" in ok.content


@pytest.mark.django_db
@override_settings(BROKER_METRICS_TOKEN="", BROKER_METRICS_ALLOWED_NETWORKS=["10.1.0.0/16"])
def test_metrics_are_limited_to_the_allowed_networks(client):
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200


@pytest.mark.django_db
@override_settings(
    BROKER_METRICS_TOKEN="t0k3n-metrics",
    BROKER_METRICS_ALLOWED_NETWORKS=[],
    # A queue no worker of another test listens on, so nothing takes the sample tasks.
    CELERY_TASK_DEFAULT_QUEUE="metrics-test-queue",
)
def test_metrics_report_grants_counters_latency_and_queue_depth(client, owner):
    from prometheus_client.parser import text_string_to_metric_families

    app = make_app()
    for n in range(3):
        save_grant(owner, app, n)
    save_grant(owner, app, 9, status=Grant.Status.RECONNECT_REQUIRED)
    metrics.count_refresh("success", 0.2)
    metrics.count_refresh("success", 3.0)
    metrics.count_refresh("failure", 40)
    metrics.count_token_issue("reports", "issued")
    metrics.count_token_issue("reports", "issued")
    metrics.count_token_issue("reports", "denied")
    redis_client().delete("metrics-test-queue")
    redis_client().rpush("metrics-test-queue", "a", "b")
    try:
        text = client.get("/metrics", HTTP_AUTHORIZATION="Bearer t0k3n-metrics").content.decode()
    finally:
        redis_client().delete("metrics-test-queue")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("broker_grants", (("status", "active"),))] == 3
    assert samples[("broker_grants", (("status", "reconnect_required"),))] == 1
    assert samples[("broker_grants", (("status", "revoked"),))] == 0
    assert samples[("broker_refreshes_total", (("outcome", "success"),))] == 2
    assert samples[("broker_refreshes_total", (("outcome", "failure"),))] == 1
    key = ("broker_token_issues_total", (("outcome", "issued"), ("service", "reports")))
    assert samples[key] == 2
    assert samples[("broker_refresh_duration_seconds_bucket", (("le", "0.25"),))] == 1
    assert samples[("broker_refresh_duration_seconds_bucket", (("le", "5.0"),))] == 2
    assert samples[("broker_refresh_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    assert samples[("broker_refresh_duration_seconds_count", ())] == 3
    assert samples[("broker_celery_queue_depth", ())] == 2


def test_counting_never_fails_the_caller_when_redis_is_down():
    with override_settings(REDIS_URL=CLOSED_REDIS):
        metrics.count_refresh("success", 1.0)
        metrics.count_token_issue("svc", "issued")
