"""Backoff bounds and the start-up check that keeps Celery's and the lock's timeouts apart."""

from broker.refresh import timing


def test_backoff_grows_is_capped_and_honours_retry_after(settings):
    settings.BROKER_REFRESH_BACKOFF_BASE = 5
    settings.BROKER_REFRESH_BACKOFF_MAX = 300
    first = [timing.backoff_seconds(1) for _ in range(50)]
    assert all(3 <= delay <= 5 for delay in first)
    assert len(set(first)) > 1  # jitter
    assert all(80 <= timing.backoff_seconds(6) <= 160 for _ in range(20))
    assert all(timing.backoff_seconds(30) <= 300 for _ in range(20))
    assert timing.backoff_seconds(1, retry_after=120) >= 120


def test_the_lock_outlives_the_provider_timeout(settings):
    settings.BROKER_PROVIDER_TIMEOUT = 10
    settings.BROKER_REFRESH_LOCK_TIMEOUT = None
    assert timing.lock_timeout() > settings.BROKER_PROVIDER_TIMEOUT
    assert timing.lock_wait() == 20


def test_a_visibility_timeout_shorter_than_the_lock_is_a_startup_error(settings):
    assert timing.check_timing() == []
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 20}
    assert [e.id for e in timing.check_timing()] == ["broker.E101"]
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
    settings.BROKER_REFRESH_CLAIM_TIMEOUT = 10
    assert [e.id for e in timing.check_timing()] == ["broker.W102"]
