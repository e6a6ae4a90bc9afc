"""Malformed input to the browser pages (OAuth callbacks, admin lists, forms): a clear 400
page, never a 500. PostgreSQL refuses NUL in text, so run this on both databases."""

from __future__ import annotations

import pytest
from django.test import Client

from broker.models import PendingAuthorization, ProviderApp
from tests.factories import make_app

pytestmark = pytest.mark.django_db

BAD_REQUEST_HEADING = "This request cannot be handled"


def assert_bad_request_page(response) -> None:
    assert response.status_code == 400, response.content[:300]
    assert response["Content-Type"].startswith("text/html")
    assert BAD_REQUEST_HEADING in response.content.decode()


@pytest.fixture
def browser_client(owner) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(owner)
    return client


def test_a_nul_in_the_oauth2_callbacks_state_is_a_400_and_consumes_nothing(browser_client):
    app = make_app()
    assert browser_client.post(f"/connect/{app.slug}").status_code == 302
    pending = PendingAuthorization.objects.get()
    response = browser_client.get(
        f"/oauth/callback/{app.slug}", {"state": pending.state + "\x00", "code": "c"}
    )
    assert_bad_request_page(response)
    pending.refresh_from_db()
    assert pending.consumed_at is None


def test_a_nul_in_the_oauth1_callbacks_token_is_a_400(browser_client):
    app = ProviderApp.objects.create(
        slug="jira-acme", kind="jira-dc-oauth1", name="Jira", base_url="https://jira.example"
    )
    response = browser_client.get(
        f"/oauth1/callback/{app.slug}", {"oauth_token": "t\x00", "oauth_verifier": "v"}
    )
    assert_bad_request_page(response)


@pytest.mark.parametrize(
    "url",
    [
        "/admin/broker/providerapp/?kind=oauth2%00",
        "/admin/broker/grant/?status=active%00",
        "/admin/broker/auditevent/?actor=a%00",
        "/admin/broker/auditevent/?q=a%00b",
        "/admin/broker/serviceclient/?q=%00",
    ],
)
def test_a_nul_in_an_admin_filter_or_search_is_a_400(admin_user, url):
    client = Client(raise_request_exception=False)
    client.force_login(admin_user)
    assert_bad_request_page(client.get(url))


def test_a_3_mb_form_is_a_400_page(client):
    response = client.post("/accounts/login/", {"username": "alice", "password": "x" * 3_000_000})
    assert_bad_request_page(response)
