"""Providers' answers are read with the bounded parser (broker.infra.bounded_json, through
the outbound HTTP module's responses): 1,500 nested arrays in a token or identity answer
is the ordinary "not JSON" failure, never a RecursionError out of the refresh or the
consent."""

from __future__ import annotations

import pytest

from broker.providers import account, oauth2_client
from tests.factories import make_app
from tests.local_http import start_local_server

pytestmark = pytest.mark.django_db
DEEP = b"[" * 1500 + b"]" * 1500


@pytest.fixture
def provider():
    server = start_local_server()
    yield server
    server.stop()


def test_a_deeply_nested_token_answer_is_a_token_endpoint_error(provider):
    app = make_app("oauth2", kind="oauth2", client_id="c", secret="s", base_url=provider.url)
    app.endpoints = {"token": f"{provider.url}/t"}
    provider.bodies.append(DEEP)
    with pytest.raises(oauth2_client.ClientMisconfigured, match="did not answer with JSON"):
        oauth2_client.refresh(app, refresh_token="rt-1", redirect_uri="https://b/cb")


def test_a_deeply_nested_identity_answer_is_not_json(provider):
    provider.documents["/me"] = b'{"account_id": ' + DEEP + b"}"
    with pytest.raises(account.AccountLookupError, match="not JSON"):
        account.get_json(f"{provider.url}/me", "at")
