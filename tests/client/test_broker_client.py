"""The client package against the live broker and the sandbox: service authentication,
the broker token and provider token caches, min_ttl, connect links, typed errors."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from broker_client import (
    AuthenticationError,
    Forbidden,
    InsufficientScope,
    InvalidRequest,
    NotFound,
    ProviderUnavailable,
    RateLimited,
    ReconnectRequired,
)
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from django.db.models import F
from django.utils import timezone
from joserfc import jwt

from broker.infra.bounded_json import unverified_jwt
from broker.models import Grant, ServiceClient
from broker.service_identity.client_assertions import ALGORITHMS
from broker.service_identity.service_keys import public_jwk, thumbprint
from broker.service_identity.service_secrets import rotate_secret
from tests.client.conftest import (
    ACCESS_TOKEN_SECONDS,
    add_rule,
    count,
    create_service,
    events,
    private_pem,
    public_pem,
)
from tests.sandbox_grants import identity_works, refresh_count

pytestmark = pytest.mark.sandbox


# --- authentication and the broker token ---------------------------------------------------


def test_it_authenticates_with_a_secret_once_for_many_calls(broker, service, grant):
    first = broker.access_token(user="alice", provider="sandbox")
    broker.access_token(grant=str(grant.pk))
    broker.connect_link("alice", "sandbox", "/connections/")

    assert first.grant == str(grant.pk) and first.account.name == "alice"
    [authenticated] = events("service.authenticated", service["client_id"])
    assert authenticated.detail["method"] == "client_secret_basic"
    assert count("token.issued", service["client_id"]) == 2


@pytest.mark.parametrize(
    "make_key",
    [
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="rsa"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256R1()), id="ec-p256"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, id="ed25519"),
    ],
)
def test_it_authenticates_with_private_key_jwt(make_key, make_client, tmp_path, sandbox, grant):
    key = make_key()
    (tmp_path / "public.pem").write_text(public_pem(key))
    created = create_service("--public-key", str(tmp_path / "public.pem"))
    add_rule(created["client_id"], "sandbox")
    # No kid given: the client computes the RFC 7638 thumbprint the command printed.
    broker = make_client(created["client_id"], private_key=private_pem(key))

    token = broker.access_token(user="alice", provider="sandbox")
    broker.access_token(user="alice", provider="sandbox", scopes=["read:me"])

    assert identity_works(sandbox, token.access_token)
    [authenticated] = events("service.authenticated", created["client_id"])
    assert authenticated.detail["method"] == "private_key_jwt"


@pytest.mark.parametrize(
    "make_key",
    [
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="rsa"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256R1()), id="ec-p256"),
        pytest.param(ed25519.Ed25519PrivateKey.generate, id="ed25519"),
    ],
)
def test_the_client_signs_with_the_brokers_jose_library_alone(make_key, tmp_path):
    """One JOSE library across the broker and the client package (joserfc): the client signs
    its assertions with PyJWT unimportable, and the broker's own check of a registered key
    accepts them (algorithm, kid as the RFC 7638 thumbprint the command prints)."""
    key = make_key()
    (tmp_path / "private.pem").write_text(private_pem(key))
    signed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['jwt'] = None\n"
            "from broker_client.assertions import AssertionSigner\n"
            "signer = AssertionSigner(open(sys.argv[1]).read(), None, 'svc', sys.argv[2])\n"
            "print(signer.kid, signer.algorithm, signer.assertion())",
            str(tmp_path / "private.pem"),
            "https://broker.example/api/v1/oauth/token",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert signed.returncode == 0, signed.stderr
    kid, algorithm, assertion = signed.stdout.split()
    assert kid == thumbprint(public_pem(key))
    assert algorithm in ALGORITHMS and algorithm != "EdDSA"  # (deprecated by RFC 9864)
    header, claims = unverified_jwt(assertion)
    assert header == {"typ": "JWT", "alg": algorithm, "kid": kid}
    assert claims["iss"] == claims["sub"] == "svc"
    assert jwt.decode(assertion, public_jwk(public_pem(key)), algorithms=[algorithm])


def test_an_explicit_kid_is_sent_and_a_wrong_one_is_refused(rsa_key, make_client, tmp_path, grant):
    (tmp_path / "public.pem").write_text(public_pem(rsa_key))
    created = create_service("--public-key", str(tmp_path / "public.pem"))
    add_rule(created["client_id"], "sandbox")
    right = make_client(created["client_id"], private_key=private_pem(rsa_key), kid=created["kid"])
    wrong = make_client(created["client_id"], private_key=private_pem(rsa_key), kid="not-a-kid")

    assert right.access_token(user="alice", provider="sandbox").access_token
    with pytest.raises(AuthenticationError) as refused:
        wrong.access_token(user="alice", provider="sandbox")

    assert refused.value.error == "invalid_client" and refused.value.status == 401
    assert count("token.issued", created["client_id"]) == 1


def test_an_unregistered_key_gets_nothing(rsa_key, make_client, tmp_path, grant, service):
    impostor = make_client(service["client_id"], private_key=private_pem(rsa_key))
    with pytest.raises(AuthenticationError) as refused:
        impostor.access_token(user="alice", provider="sandbox")
    assert refused.value.error == "invalid_client"
    assert count("token.issued", service["client_id"]) == 0


def test_a_wrong_secret_is_an_authentication_error(make_client, service, grant):
    broker = make_client(service["client_id"], client_secret="bks_wrong")
    with pytest.raises(AuthenticationError) as refused:
        broker.access_token(user="alice", provider="sandbox")
    assert refused.value.error == "invalid_client" and refused.value.status == 401
    assert count("token.issued", service["client_id"]) == 0


def test_the_broker_token_is_renewed_shortly_before_it_expires(broker, service, grant, settings):
    settings.BROKER_API_TOKEN_SECONDS = 6  # renewed three seconds before (half its life)
    started = time.monotonic()
    broker.grants()
    broker.grants()
    assert count("service.authenticated", service["client_id"]) == 1
    time.sleep(max(0.0, started + 3.2 - time.monotonic()))
    broker.grants()
    assert count("service.authenticated", service["client_id"]) == 2


def test_threads_share_one_authentication(broker, service, grant):
    with ThreadPoolExecutor(max_workers=8) as pool:
        tokens = list(
            pool.map(lambda _: broker.access_token(user="alice", provider="sandbox"), range(8))
        )
    assert len({token.access_token for token in tokens}) == 1
    assert count("service.authenticated", service["client_id"]) == 1


def test_a_retired_broker_token_is_replaced_once(broker, service, grant):
    broker.access_token(user="alice", provider="sandbox", scopes=["read:me"])
    # Every broker token issued so far dies (as when a secret is rotated out).
    ServiceClient.objects.filter(client_id=service["client_id"]).update(
        credentials_generation=F("credentials_generation") + 1
    )

    token = broker.access_token(user="alice", provider="sandbox", scopes=["read:jira-work"])

    assert token.grant == str(grant.pk) and "read:jira-work" in token.scopes
    assert count("service.authenticated", service["client_id"]) == 2
    assert count("token.issued", service["client_id"]) == 2


def test_a_secret_rotated_out_fails_after_one_new_authentication(broker, service, grant):
    broker.access_token(user="alice", provider="sandbox", scopes=["read:me"])
    rotate_secret(ServiceClient.objects.get(client_id=service["client_id"]), timedelta(0))

    with pytest.raises(AuthenticationError) as refused:
        broker.access_token(user="alice", provider="sandbox", scopes=["read:jira-work"])

    assert refused.value.error == "invalid_client"
    failures = events("service.auth_failed", service["client_id"])
    assert [event.detail["reason"] for event in failures] == [
        "service disabled or credentials retired",  # the broker token, once
        "wrong or expired secret",  # the one new authentication
    ]
    assert count("token.issued", service["client_id"]) == 1


# --- provider tokens: cache, min_ttl, force_refresh ---------------------------------------


def test_provider_tokens_are_cached_per_grant_and_scopes(broker, service, grant, sandbox):
    first = broker.access_token(user="alice", provider="sandbox")
    again = broker.access_token(user="alice", provider="sandbox")
    narrow = broker.access_token(user="alice", provider="sandbox", scopes=["read:me"])
    narrow_again = broker.access_token(user="alice", provider="sandbox", scopes={"read:me"})

    assert again.access_token == first.access_token and again.grant == first.grant
    assert again.expires_in is not None and again.expires_in <= first.expires_in
    assert "read:me" in narrow.scopes and narrow_again.access_token == narrow.access_token
    assert count("token.issued", service["client_id"]) == 2  # one per scopes
    assert refresh_count(sandbox) == 0
    assert first.expires_at is not None and first.expires_at.tzinfo is not None
    assert first.expires_at > datetime.now(UTC) + timedelta(seconds=ACCESS_TOKEN_SECONDS - 60)
    assert first.access_token not in repr(first)


def test_a_min_ttl_the_cached_token_does_not_meet_asks_the_broker(broker, service, grant, sandbox):
    # As if the stored token were 500 s into its ten minutes: it lasts 100 s more.
    now = timezone.now()
    Grant.objects.filter(pk=grant.pk).update(
        consented_at=now - timedelta(seconds=500),
        last_refreshed_at=now - timedelta(seconds=500),
        access_expires_at=now + timedelta(seconds=100),
    )
    sandbox.reset_counters()
    stored = broker.access_token(user="alice", provider="sandbox", min_ttl=60)
    cached = broker.access_token(user="alice", provider="sandbox", min_ttl=90)
    assert cached.access_token == stored.access_token and stored.expires_in <= 100
    assert count("token.issued", service["client_id"]) == 1

    fresh = broker.access_token(user="alice", provider="sandbox", min_ttl=300)

    assert fresh.access_token != stored.access_token and fresh.expires_in >= 300
    assert refresh_count(sandbox) == 1
    assert count("token.issued", service["client_id"]) == 2
    again = broker.access_token(user="alice", provider="sandbox", min_ttl=300)
    assert again.access_token == fresh.access_token
    assert count("token.issued", service["client_id"]) == 2


def test_force_refresh_skips_the_cache_and_replaces_it(broker, service, grant, sandbox):
    cached = broker.access_token(user="alice", provider="sandbox")
    sandbox.reset_counters()

    forced = broker.access_token(user="alice", provider="sandbox", force_refresh=True)

    assert forced.access_token != cached.access_token
    assert refresh_count(sandbox) == 1
    assert identity_works(sandbox, forced.access_token)
    assert broker.access_token(user="alice", provider="sandbox").access_token == (
        forced.access_token
    )
    assert count("token.issued", service["client_id"]) == 2


# --- grants and connect links ----------------------------------------------------------


def test_it_lists_the_grants_it_may_see_without_tokens(broker, grant, jira_grant, make_client):
    listed = broker.grants(user="alice")
    assert {(g.provider, g.status, g.user) for g in listed} == {
        ("sandbox", "active", "alice"),
        ("sandbox-jira", "active", "alice"),
    }
    [only] = broker.grants(provider="sandbox")
    assert only.id == str(grant.pk) and only.account.id == "sandbox-alice"
    assert only.access_expires_at is not None and not only.reconnect_soon
    assert broker.grants(status="revoked") == []
    stranger = create_service()  # no access rule
    assert (
        make_client(stranger["client_id"], client_secret=stranger["client_secret"]).grants() == []
    )


def test_it_lists_every_grant_past_the_brokers_page_size(broker, grant, owner):
    Grant.objects.bulk_create(
        Grant(user=owner, provider_app=grant.provider_app, external_account_id=f"acct-{n}")
        for n in range(1200)
    )
    listed = broker.grants(provider="sandbox")
    assert len(listed) == len({g.id for g in listed}) == 1201
    assert {g.provider for g in listed} == {"sandbox"}


def test_it_creates_a_connect_link(broker, service, owner, broker_url, broker_login):
    link = broker.connect_link("alice", "sandbox", f"{broker_url}/connections/")
    assert link.url.startswith(f"{broker_url}/")
    assert link.expires_at is not None and link.expires_at > datetime.now(UTC)
    page = broker_login("alice", "alice-broker").get(link.url, timeout=10)
    assert page.status_code == 200 and "data-connect-link" in page.text
    assert count("connect_link.created", service["client_id"]) == 1


# --- typed errors --------------------------------------------------------------------------


def test_an_unknown_grant_or_user_is_not_found(broker, service, grant, outsider):
    for target in (
        {"grant": "00000000-0000-0000-0000-000000000000"},
        {"user": "mallory", "provider": "sandbox"},
        {"user": "alice", "provider": "no-such-app"},
    ):
        with pytest.raises(NotFound) as missing:
            broker.access_token(**target)
        assert missing.value.error == "not_found" and missing.value.status == 404
    assert count("token.issued", service["client_id"]) == 0


def test_scopes_beyond_the_rules_are_insufficient_scope(make_client, grant):
    created = create_service()
    add_rule(created["client_id"], "sandbox", "--scopes", "read:me")
    broker = make_client(created["client_id"], client_secret=created["client_secret"])

    with pytest.raises(InsufficientScope) as refused:
        broker.access_token(user="alice", provider="sandbox", scopes=["read:me", "write:jira-work"])

    assert refused.value.error == "insufficient_scope" and refused.value.status == 403
    assert "write:jira-work" in refused.value.description
    assert isinstance(refused.value, Forbidden)
    assert count("token.issued", created["client_id"]) == 0


def test_a_rule_that_does_not_allow_it_is_forbidden(broker, service, owner):
    # The service may create links for sandbox, not for sandbox-jira.
    with pytest.raises(Forbidden) as refused:
        broker.connect_link("alice", "sandbox-jira", "/connections/")
    assert refused.value.error == "access_denied" and refused.value.status == 403
    assert not isinstance(refused.value, InsufficientScope)
    assert count("connect_link.created", service["client_id"]) == 0


def test_a_service_without_a_connect_links_rule_is_told_the_flag(make_client, sandbox_apps, owner):
    created = create_service()
    add_rule(created["client_id"], "sandbox")  # no --connect-links
    broker = make_client(created["client_id"], client_secret=created["client_secret"])

    with pytest.raises(Forbidden) as refused:
        broker.connect_link("alice", "sandbox", "/connections/")

    assert refused.value.status == 403
    assert "--connect-links" in refused.value.description
    assert "--connect-links" in str(refused.value)  # what a traceback shows
    assert count("connect_link.created", created["client_id"]) == 0


def test_a_rule_for_another_app_names_the_flag_this_app_needs(broker, service, owner):
    with pytest.raises(Forbidden) as refused:
        broker.connect_link("alice", "sandbox-jira", "/connections/")
    assert "--connect-links" in refused.value.description
    assert "sandbox-jira" in refused.value.description
    assert count("connect_link.created", service["client_id"]) == 0


def test_a_grant_dead_at_the_provider_is_reconnect_required(broker, service, grant, sandbox):
    sandbox.revoke_user("alice")
    with pytest.raises(ReconnectRequired) as dead:
        broker.access_token(user="alice", provider="sandbox", force_refresh=True)
    assert dead.value.error == "reconnect_required" and dead.value.status == 409
    assert count("token.issued", service["client_id"]) == 0


def test_a_failing_provider_is_provider_unavailable(broker, service, grant, sandbox):
    Grant.objects.filter(pk=grant.pk).update(access_expires_at=timezone.now())
    sandbox.faults(mode="error500")
    with pytest.raises(ProviderUnavailable) as failing:
        broker.access_token(user="alice", provider="sandbox")
    assert failing.value.status == 503 and failing.value.error == "temporarily_unavailable"
    assert failing.value.retry_after is not None and failing.value.retry_after >= 1
    assert count("token.issued", service["client_id"]) == 0


def test_too_many_calls_are_rate_limited(broker, service, settings):
    settings.BROKER_API_RATE_LIMIT = 2  # per service and minute, token requests included
    with pytest.raises(RateLimited) as limited:
        for _ in range(5):  # hits the limit whatever the minute window's start
            broker.grants()
    assert limited.value.status == 429 and limited.value.error == "rate_limited"
    assert limited.value.retry_after is not None and 1 <= limited.value.retry_after <= 61


def test_a_malformed_call_is_invalid_request(broker, service, jira_grant):
    with pytest.raises(InvalidRequest) as malformed:
        broker.access_token(user="alice", provider="sandbox-jira")
    assert malformed.value.status == 400 and "/api/v1/sign" in malformed.value.description
    with pytest.raises(ValueError, match="grant="):
        broker.access_token(user="alice")
