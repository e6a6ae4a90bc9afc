"""Storing token responses and scheduling the next refresh."""

from datetime import timedelta

import pytest
from django.utils import timezone

from broker.models import Grant, ProviderApp
from broker.providers.oauth2_client import TokenResponse
from broker.refresh.schedule import apply_token_response, refresh_lead

pytestmark = pytest.mark.django_db


@pytest.fixture
def grant(owner):
    app = ProviderApp.objects.create(slug="cloud", kind="atlassian", name="Cloud", client_id="c")
    grant = Grant(user=owner, provider_app=app, external_account_id="acc")
    grant.seal("refresh_token", "rt-0")
    grant.save()
    return grant


def response(**kw):
    values = {
        "access_token": "at-1",
        "refresh_token": "rt-1",
        "expires_in": 3600,
        "scopes": None,
        "token_type": "Bearer",
    }
    return TokenResponse(**(values | kw))


def test_a_rotated_refresh_token_replaces_the_old_one(grant):
    apply_token_response(grant, response(), refreshed=True)
    assert grant.unseal("refresh_token") == "rt-1"
    assert grant.unseal("access_token") == "at-1"
    assert grant.token_version == 1


def test_a_response_without_refresh_token_keeps_the_stored_one(grant):
    fields = apply_token_response(grant, response(refresh_token=None), refreshed=True)
    assert grant.unseal("refresh_token") == "rt-0"
    assert "refresh_token_sealed" not in fields


def test_the_next_refresh_comes_before_expiry_with_jitter(grant):
    now = timezone.now()
    times = set()
    for _ in range(20):
        apply_token_response(grant, response(), now=now, refreshed=True)
        lead = grant.access_expires_at - grant.next_refresh_at
        assert timedelta(minutes=12) <= lead <= timedelta(minutes=12) * 1.2
        times.add(grant.next_refresh_at)
    assert len(times) > 1


def test_short_lived_tokens_refresh_before_they_expire():
    assert refresh_lead(timedelta(seconds=2)) == timedelta(seconds=1)
    assert refresh_lead(timedelta(days=1)) == timedelta(minutes=15)


def test_inactivity_limited_refresh_tokens_are_kept_alive(grant):
    now = timezone.now()
    apply_token_response(grant, response(expires_in=10**8), now=now, refreshed=True)
    assert grant.refresh_expires_at == now + timedelta(days=90)
    assert grant.next_refresh_at <= now + timedelta(days=30)


def test_absolute_expiry_is_flagged_ahead_of_time(grant):
    grant.consented_at = timezone.now() - timedelta(days=355)
    apply_token_response(grant, response(), refreshed=False)
    assert grant.needs_reconnect_soon
    grant.refresh_absolute_expires_at = timezone.now() + timedelta(days=200)
    assert not grant.needs_reconnect_soon
