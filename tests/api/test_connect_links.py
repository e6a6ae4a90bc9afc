"""POST /api/v1/connect-links and the browser view behind the link."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from broker.consent import connect_links
from broker.models import ConnectLink, PendingAuthorization
from tests.api.conftest import audit_events, basic, post_form

pytestmark = pytest.mark.django_db


def create(api, headers, **body):
    payload = {"user": "alice", "provider": "atlassian", "return_to": "http://localhost:8000/done"}
    payload.update(body)
    return api.post("/api/v1/connect-links", payload, content_type="application/json", **headers)


@pytest.fixture
def link_url(api, owner, rule, bearer) -> str:
    response = create(api, bearer(), scopes=["read:me"])
    assert response.status_code == 201, response.content
    url: str = response.json()["url"]
    return url


def path_of(url: str) -> str:
    return url.removeprefix("http://localhost:8000")


def test_it_makes_a_single_use_user_bound_link_and_stores_only_a_digest(api, link_url):
    token = link_url.rsplit("/", 1)[1]
    assert link_url.startswith("http://localhost:8000/connect-links/") and len(token) >= 43
    link = ConnectLink.objects.get()
    assert link.token_digest == connect_links.digest(token) and token not in link.token_digest
    assert link.user.username == "alice" and link.scopes == ["read:me"]
    assert timedelta(minutes=9) < link.expires_at - timezone.now() <= timedelta(minutes=10)
    [event] = audit_events(action="connect_link.created")
    assert token not in str(event.detail)


@pytest.mark.parametrize(
    "return_to",
    [
        "https://evil.example/done",
        "javascript:alert(1)",
        "http://localhost:8000@evil.example/",
    ],
)
def test_return_to_must_be_on_an_allow_listed_origin(api, owner, rule, bearer, return_to):
    response = create(api, bearer(), return_to=return_to)
    assert response.status_code == 400 and "return_to" in response.json()["error_description"]
    assert not ConnectLink.objects.exists()


def test_an_allow_listed_origin_is_accepted(api, owner, rule, bearer, settings):
    settings.BROKER_RETURN_URL_ALLOWLIST = ["https://app.example"]
    assert create(api, bearer(), return_to="https://app.example/after").status_code == 201


def test_a_rule_without_connect_links_is_403(api, owner, rule, bearer):
    rule.can_create_connect_links = False
    rule.save()
    from broker.service_identity import tokens

    # A token minted with every API scope, to reach the rule check itself.
    token, _ = tokens.issue(rule.service, tokens.API_SCOPES)
    response = create(api, {"HTTP_AUTHORIZATION": f"Bearer {token}"})
    assert response.status_code == 403 and not ConnectLink.objects.exists()
    assert audit_events(action="connect_link.denied")
    assert "--connect-links" in response.json()["error_description"]


def test_a_service_without_any_connect_links_rule_is_told_the_flag(api, owner, rule, bearer):
    rule.can_create_connect_links = False
    rule.save()
    response = create(api, bearer())  # its broker token lacks connect-links:create
    assert response.status_code == 403 and not ConnectLink.objects.exists()
    assert response.json()["error"] == "insufficient_scope"
    assert "--connect-links" in response.json()["error_description"]


def test_asking_for_the_connect_links_scope_without_the_rule_names_the_flag(
    api, owner, rule, service_with_secret
):
    rule.can_create_connect_links = False
    rule.save()
    service, secret = service_with_secret
    response = post_form(
        api,
        {"grant_type": "client_credentials", "scope": "connect-links:create"},
        HTTP_AUTHORIZATION=basic(service.client_id, secret),
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"
    assert "--connect-links" in response.json()["error_description"]


def test_the_link_requires_sign_in_and_is_not_consumed_by_it(link_url):
    response = Client().get(path_of(link_url))
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert ConnectLink.objects.get().used_at is None


def test_another_user_cannot_use_the_link(link_url, outsider):
    browser = Client()
    browser.force_login(outsider)
    assert browser.get(path_of(link_url)).status_code == 403
    assert browser.post(path_of(link_url)).status_code == 403
    assert ConnectLink.objects.get().used_at is None
    assert audit_events(action="connect_link.denied", actor="mallory")


def test_a_get_shows_a_confirmation_and_consumes_nothing(link_url, owner):
    browser = Client()
    browser.force_login(owner)
    response = browser.get(path_of(link_url))
    assert response.status_code == 200 and b"data-connect-link" in response.content
    assert response["Referrer-Policy"] == "no-referrer"
    assert ConnectLink.objects.get().used_at is None


def test_an_expired_link_is_refused(link_url, owner):
    ConnectLink.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    browser = Client()
    browser.force_login(owner)
    assert browser.post(path_of(link_url)).status_code == 404
    assert ConnectLink.objects.get().used_at is None


def test_the_bound_user_consumes_the_link_once_and_starts_consent(link_url, owner):
    browser = Client(enforce_csrf_checks=False)
    browser.force_login(owner)
    first = browser.post(path_of(link_url))
    assert first.status_code == 302
    assert first["Location"].startswith("https://auth.atlassian.com/authorize?")
    pending = PendingAuthorization.objects.get()
    assert (pending.user, pending.provider_app.slug) == (owner, "atlassian")
    assert (pending.scopes, pending.return_to) == (["read:me"], "http://localhost:8000/done")
    assert ConnectLink.objects.get().used_at is not None
    again = browser.post(path_of(link_url))
    assert again.status_code == 404 and PendingAuthorization.objects.count() == 1


def test_the_post_needs_a_csrf_token(link_url, owner):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(owner)
    assert browser.post(path_of(link_url)).status_code == 403
    assert not PendingAuthorization.objects.exists()
    assert ConnectLink.objects.get().used_at is None
