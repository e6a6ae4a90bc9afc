"""`BrokerClient.exchange`: token exchange (RFC 8693) for the user whose IdP token the
service presents, over HTTP against the live broker and the sandbox; and the typed errors
of grants that hold API tokens."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import requests
from broker_client import (
    ApiTokenGrant,
    BrokerClient,
    Forbidden,
    InsufficientScope,
    InvalidRequest,
    InvalidTarget,
)
from django.utils import timezone

from accounts.models import ExternalIdentity
from broker.models import Grant, ProviderApp
from tests.client.conftest import TIMEOUT, add_rule, count, create_service, private_pem, public_pem
from tests.subject_idp import AUDIENCE

pytestmark = pytest.mark.sandbox


@pytest.fixture
def alice_signed_in(owner, idp) -> str:
    """alice's ID token from the company IdP, as a web app holds it after her sign-in."""
    ExternalIdentity.objects.create(user=owner, issuer=idp.issuer, subject="alice-sub")
    return idp.token("alice-sub")


@pytest.fixture
def assistant(broker_url, sandbox_apps) -> dict:
    """A service that may use alice's sandbox grant only on her behalf."""
    created = create_service("--subject-audience", AUDIENCE)
    add_rule(created["client_id"], "sandbox", "--on-behalf-of")
    return created


@pytest.fixture
def client(assistant, make_client) -> BrokerClient:
    return make_client(assistant["client_id"], client_secret=assistant["client_secret"])


def test_it_exchanges_the_users_token_for_her_provider_token(
    client, assistant, alice_signed_in, grant, sandbox
):
    token = client.exchange(alice_signed_in, "sandbox")
    assert token.token_type == "Bearer" and token.expires_in and token.expires_in > 60
    assert token.issued_token_type == "urn:ietf:params:oauth:token-type:access_token"
    assert set(token.scopes) == set(grant.scopes)
    assert alice_signed_in not in repr(token) and token.access_token not in repr(token)
    me = requests.get(
        f"{sandbox.url}/me",
        headers={"Authorization": f"Bearer {token.access_token}"},
        timeout=TIMEOUT,
    )
    assert me.status_code == 200 and me.json()["name"] == "Alice Anders"

    # Cached per user token and provider while it lasts min_ttl: one exchange at the broker.
    assert client.exchange(alice_signed_in, "sandbox").access_token == token.access_token
    assert count("token.exchanged", assistant["client_id"]) == 1
    # A min_ttl the cached token does not meet asks the broker again.
    client.exchange(alice_signed_in, "sandbox", min_ttl=token.expires_in + 60)
    assert count("token.exchanged", assistant["client_id"]) == 2


def test_a_token_is_cached_no_longer_than_the_users_token_is_valid(
    client, assistant, idp, owner, grant
):
    ExternalIdentity.objects.create(user=owner, issuer=idp.issuer, subject="alice-sub")
    short = idp.token("alice-sub", exp=int(time.time()) + 2)
    first = client.exchange(short, "sandbox", min_ttl=0)
    assert first.expires_in and first.expires_in > 60
    assert client.exchange(short, "sandbox", min_ttl=0).access_token == first.access_token
    assert count("token.exchanged", assistant["client_id"]) == 1  # cached
    time.sleep(2.5)
    # The user's token has expired: the client asks the broker again (which still accepts
    # it within its 30 s leeway for clock skew).
    client.exchange(short, "sandbox", min_ttl=0)
    assert count("token.exchanged", assistant["client_id"]) == 2


def test_it_exchanges_with_private_key_jwt(
    assistant, alice_signed_in, grant, rsa_key, tmp_path, make_client
):
    (tmp_path / "key.pem").write_text(public_pem(rsa_key))
    keyed = create_service(
        "--public-key", str(tmp_path / "key.pem"), "--subject-audience", AUDIENCE
    )
    add_rule(keyed["client_id"], "sandbox", "--on-behalf-of")
    client = make_client(keyed["client_id"], private_key=private_pem(rsa_key))
    assert client.exchange(alice_signed_in, "sandbox").access_token == grant.unseal("access_token")


def test_a_service_that_only_names_the_user_gets_nothing(client, grant):
    with pytest.raises(Forbidden) as refused:
        client.access_token(user="alice", provider="sandbox")
    assert refused.value.error == "on_behalf_of_required"


def test_bad_user_tokens_and_targets_are_typed_errors(client, idp, alice_signed_in, grant):
    with pytest.raises(InvalidRequest) as bad:
        client.exchange(idp.token("alice-sub", aud="another-service"), "sandbox")
    assert bad.value.error == "invalid_request" and bad.value.status == 400
    with pytest.raises(InvalidTarget) as target:
        client.exchange(alice_signed_in, "sandbox-jira")  # no rule for it
    assert target.value.error == "invalid_target"
    with pytest.raises(InsufficientScope):
        client.exchange(alice_signed_in, "sandbox", scope=["write:jira-work"])


def test_an_api_token_grant_is_a_typed_refusal_everywhere(
    client, assistant, alice_signed_in, owner, service, broker
):
    site = ProviderApp.objects.get(slug="sandbox-api-token")
    grant = Grant(
        user=owner,
        provider_app=site,
        external_account_id="sandbox-alice",
        account_email="alice@sandbox.example",
        refresh_absolute_expires_at=timezone.now() + timedelta(days=30),
    )
    grant.seal("api_token", "ATATT-never-handed-out")
    grant.save()
    add_rule(assistant["client_id"], "sandbox-api-token", "--on-behalf-of")
    add_rule(service["client_id"], "sandbox-api-token", "--sign")

    with pytest.raises(ApiTokenGrant) as exchanged:
        client.exchange(alice_signed_in, "sandbox-api-token")
    with pytest.raises(ApiTokenGrant) as fetched:
        broker.access_token(grant=str(grant.pk))
    with pytest.raises(ApiTokenGrant) as signed:
        broker.sign("GET", f"{site.base_url}/rest/api/3/myself", grant=str(grant.pk))
    for refused in (exchanged, fetched, signed):
        assert refused.value.error == "api_token_grant" and refused.value.status == 400
        assert "ATATT" not in str(refused.value)
