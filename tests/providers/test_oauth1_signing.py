"""Per-request OAuth 1.0a signatures: refused where they must be, accepted by the sandbox's
oauthlib verification for exactly the request signed and for nothing else."""

from datetime import timedelta
from urllib.parse import parse_qsl

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.utils import timezone

from broker.models import Grant, ProviderApp
from broker.providers.oauth1_signing import (
    GrantNotActive,
    InvalidSigningRequest,
    NotAnOAuth1Grant,
    URLNotAllowed,
    sign_request,
)
from tests.consent.test_oauth1_flow import connect
from tests.consent_driver import TIMEOUT as HTTP_TIMEOUT
from tests.factories import save_grant

FORM = "application/x-www-form-urlencoded"


def private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def make_app(slug="jira-acme", kind="jira-dc-oauth1", base_url="https://jira.acme.example", **kw):
    app = ProviderApp(slug=slug, kind=kind, name=slug, client_id="broker", base_url=base_url, **kw)
    if kind == "oauth2":
        app.seal("client_secret", "oauth2-client-secret")
    elif app.signature_method == "HMAC-SHA1":
        app.seal("client_secret", "consumer-secret-value")
    else:
        app.seal("private_key", private_key_pem())
    app.save()
    return app


def oauth1_grant(user, app, **kw):
    """An OAuth 1.0a grant: an access token and its secret, no refresh token."""
    return save_grant(
        user,
        app,
        **{
            "external_account_id": "JIRAUSER1",
            "account_name": "",
            "scopes": [],
            "access": "access-token-value",
            "refresh": "",
            "token_secret": "token-secret-value",
            **kw,
        },
    )


def oauth_params(header: str) -> dict[str, str]:
    assert header.startswith("OAuth ")
    return {k.strip(): v.strip('"') for k, v in (p.split("=", 1) for p in header[6:].split(","))}


@pytest.mark.django_db
class TestRefusals:
    @pytest.fixture
    def grant(self, owner):
        return oauth1_grant(owner, make_app())

    def test_it_signs_for_the_apps_server_with_a_fresh_nonce(self, grant):
        url = "https://jira.acme.example/rest/api/2/search?jql=project%3DACME"
        first = sign_request(grant, method="get", url=url)
        second = sign_request(grant, method="GET", url=url)
        params = oauth_params(first)
        assert params["oauth_consumer_key"] == "broker"
        assert params["oauth_token"] == "access-token-value"
        assert params["oauth_signature_method"] == "RSA-SHA1"
        assert params["oauth_nonce"] != oauth_params(second)["oauth_nonce"]
        assert "token-secret-value" not in first and "PRIVATE" not in first

    def test_hmac_apps_sign_with_hmac_sha1(self, owner):
        app = make_app("jira-hmac", signature_method="HMAC-SHA1")
        header = sign_request(oauth1_grant(owner, app), method="GET", url=app.base_url + "/x")
        assert oauth_params(header)["oauth_signature_method"] == "HMAC-SHA1"
        assert "consumer-secret-value" not in header

    @pytest.mark.parametrize(
        "url",
        [
            "https://evil.example/rest/api/2/myself",
            "https://jira.acme.example.evil.example/rest/api/2/myself",
            "https://jira.acme.example:8443/rest/api/2/myself",
            "http://jira.acme.example/rest/api/2/myself",
            "https://jira.acme.example@evil.example/rest/api/2/myself",
            "https://user:pw@jira.acme.example/rest/api/2/myself",
            "/rest/api/2/myself",
            "jira.acme.example/rest/api/2/myself",
            "ftp://jira.acme.example/x",
            "https://jira.acme.example/x#fragment",
            "https://jira.acme.example:99999/x",
        ],
    )
    def test_it_refuses_urls_off_the_apps_server(self, grant, url):
        with pytest.raises(URLNotAllowed):
            sign_request(grant, method="GET", url=url)

    def test_the_default_port_is_the_same_origin(self, grant):
        assert sign_request(grant, method="GET", url="https://JIRA.acme.example:443/x")

    def test_it_refuses_oauth2_grants(self, owner):
        app = make_app("cloud", kind="atlassian", base_url="")
        grant = Grant.objects.create(user=owner, provider_app=app, external_account_id="a")
        with pytest.raises(NotAnOAuth1Grant):
            sign_request(grant, method="GET", url="https://api.atlassian.com/me")

    @pytest.mark.parametrize("status", [Grant.Status.RECONNECT_REQUIRED, Grant.Status.REVOKED])
    def test_it_refuses_inactive_grants(self, grant, status):
        grant.status = status
        grant.save()
        with pytest.raises(GrantNotActive):
            sign_request(grant, method="GET", url="https://jira.acme.example/x")

    def test_it_refuses_expired_and_emptied_grants(self, grant):
        grant.access_expires_at = timezone.now() - timedelta(seconds=1)
        with pytest.raises(GrantNotActive):
            sign_request(grant, method="GET", url="https://jira.acme.example/x")
        grant.access_expires_at = None
        grant.wipe_secrets()
        with pytest.raises(GrantNotActive):
            sign_request(grant, method="GET", url="https://jira.acme.example/x")

    def test_it_refuses_bad_methods_and_form_bodies(self, grant):
        with pytest.raises(InvalidSigningRequest):
            sign_request(grant, method="GET /x HTTP/1.1", url="https://jira.acme.example/x")
        with pytest.raises(InvalidSigningRequest):
            sign_request(
                grant,
                method="POST",
                url="https://jira.acme.example/x",
                body='{"not": "a form"}',
                content_type=FORM,
            )

    def test_generic_apps_without_base_url_sign_for_their_endpoints_origin(self, owner):
        app = make_app("generic", kind="oauth1", base_url="")
        app.endpoints = {
            "request_token": "https://api.example.org/oauth/request_token",
            "authorize": "https://api.example.org/oauth/authorize",
            "access_token": "https://api.example.org/oauth/access_token",
        }
        app.save()
        grant = oauth1_grant(owner, app)
        assert sign_request(grant, method="GET", url="https://api.example.org/1/me")
        with pytest.raises(URLNotAllowed):
            sign_request(grant, method="GET", url="https://other.example.org/1/me")


# -- against the sandbox (oauthlib verifies) ----------------------------------------------------


@pytest.fixture(params=["sandbox-jira", "sandbox-jira-hmac"])
def jira_grant(request, owner, sandbox_providers, broker_login, live_server):
    browser = broker_login("alice", "alice-broker")
    assert connect(browser, live_server.url, request.param).status_code == 302
    return Grant.objects.get()


def send(method, url, authorization, body=None, content_type=None) -> requests.Response:
    headers = {"Authorization": authorization}
    if content_type:
        headers["Content-Type"] = content_type
    return requests.request(
        method, url, headers=headers, data=body.encode() if body else None, timeout=HTTP_TIMEOUT
    )


def problem(response: requests.Response) -> str:
    return dict(parse_qsl(response.text)).get("oauth_problem", "")


@pytest.mark.sandbox
def test_a_signed_get_with_query_parameters_is_accepted(jira_grant, sandbox):
    url = (
        f"{sandbox.url}/rest/api/2/echo?jql=project%20%3D%20ACME%20ORDER%20BY%20key&max=5&x=a%2Fb+c"
    )
    response = send("GET", url, sign_request(jira_grant, method="GET", url=url))
    assert response.status_code == 200, response.text
    assert response.json()["query"] == {
        "jql": "project = ACME ORDER BY key",
        "max": "5",
        "x": "a/b c",
    }
    assert response.json()["user"] == "alice"


@pytest.mark.sandbox
def test_a_signed_form_post_is_accepted(jira_grant, sandbox):
    url = f"{sandbox.url}/rest/api/2/echo?expand=names"
    body = "summary=Hello+world&labels=a%2Cb&empty="
    header = sign_request(jira_grant, method="POST", url=url, body=body, content_type=FORM)
    response = send("POST", url, header, body, FORM)
    assert response.status_code == 200, response.text
    assert response.json()["form"] == {"summary": "Hello world", "labels": "a,b", "empty": ""}


@pytest.mark.sandbox
def test_a_signed_json_post_is_accepted(jira_grant, sandbox):
    url = f"{sandbox.url}/rest/api/2/echo"
    body = '{"fields": {"summary": "Hello & goodbye"}}'
    header = sign_request(
        jira_grant, method="POST", url=url, body=body, content_type="application/json"
    )
    response = send("POST", url, header, body, "application/json")
    assert response.status_code == 200, response.text
    assert response.json()["json"] == {"fields": {"summary": "Hello & goodbye"}}


@pytest.mark.sandbox
def test_tampered_requests_are_rejected(jira_grant, sandbox):
    url = f"{sandbox.url}/rest/api/2/echo?issue=ACME-1"
    get_header = sign_request(jira_grant, method="GET", url=url)
    other_url = send("GET", url.replace("ACME-1", "ACME-2"), get_header)
    assert other_url.status_code == 401 and problem(other_url) == "signature_invalid"
    other_method = send("DELETE", url, sign_request(jira_grant, method="GET", url=url))
    assert other_method.status_code == 401 and problem(other_method) == "signature_invalid"

    body = "summary=original"
    form_header = sign_request(jira_grant, method="POST", url=url, body=body, content_type=FORM)
    other_body = send("POST", url, form_header, "summary=tampered", FORM)
    assert other_body.status_code == 401 and problem(other_body) == "signature_invalid"

    # The untouched request is fine once, and its header cannot be replayed (nonce).
    fresh = sign_request(jira_grant, method="GET", url=url)
    assert send("GET", url, fresh).status_code == 200
    replay = send("GET", url, fresh)
    assert replay.status_code == 401 and problem(replay) == "nonce_used"


@pytest.mark.sandbox
def test_signatures_stop_working_when_the_user_revokes_at_the_provider(jira_grant, sandbox):
    url = f"{sandbox.url}/rest/api/2/myself"
    assert send("GET", url, sign_request(jira_grant, method="GET", url=url)).status_code == 200
    sandbox.revoke_user("alice")
    response = send("GET", url, sign_request(jira_grant, method="GET", url=url))
    assert response.status_code == 401
