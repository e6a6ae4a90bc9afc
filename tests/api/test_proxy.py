"""The proxy (/api/v1/proxy/<app>/<path>) against a local upstream that records what it
received: which headers go out and which never do, refusals with `Broker-Error` that
forward nothing, size limits, the audit, proxy-only rules and the path patterns.
(Against the sandbox provider, with real tokens and refreshes: test_proxy_sandbox.py.)"""

from __future__ import annotations

import json
import time
from io import StringIO
from typing import Any

import pytest
import requests
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import ExternalIdentity
from broker.catalog.proxy_paths import PathRefused, encoded, matches, segments_of
from broker.models import AccessRule, Grant, ProviderApp
from tests.api.conftest import audit_events, basic, body_of, fetch_token, post_form, proxy_headers
from tests.api.test_proxy_sandbox import raw_get
from tests.factories import consented_grant, service_and_secret
from tests.gunicorn_server import gunicorn
from tests.other_refresher import REFRESHED_ACCESS_TOKEN, refreshing_elsewhere
from tests.subject_idp import AUDIENCE

pytestmark = pytest.mark.django_db

PROXY = "/api/v1/proxy/upstream"


@pytest.fixture
def upstream(local_server) -> Any:
    local_server.documents["/api/v4/user"] = b'{"username": "alice"}'
    return local_server


@pytest.fixture
def app(upstream) -> ProviderApp:
    return ProviderApp.objects.create(
        slug="upstream",
        kind="oauth2",
        name="Upstream",
        client_id="up",
        scopes=["api"],
        endpoints={
            "authorize": f"{upstream.url}/oauth/authorize",
            "token": f"{upstream.url}/oauth/token",
            "api": f"{upstream.url}/api",
        },
    )


@pytest.fixture
def grant(owner, app) -> Grant:
    return consented_grant(owner, app)


@pytest.fixture
def service(app) -> tuple[Any, str]:
    service, secret = service_and_secret()
    AccessRule.objects.create(service=service, provider_app=app)
    return service, secret


@pytest.fixture
def headers(api, service) -> dict[str, str]:
    return proxy_headers(api, service)


def test_a_get_goes_to_the_api_origin_with_the_users_token(api, upstream, grant, headers):
    response = api.get(f"{PROXY}/v4/user", {"page": "2"}, **headers)

    assert response.status_code == 200 and "Broker-Error" not in response
    assert json.loads(body_of(response)) == {"username": "alice"}
    assert response["Content-Type"] == "application/json"
    [received] = upstream.requests
    assert received.path == "/api/v4/user?page=2"
    assert received.headers["authorization"] == f"Bearer {grant.unseal('access_token')}"


def test_the_services_credentials_cookies_and_hop_by_hop_headers_stay_behind(
    api, upstream, grant, headers
):
    response = api.post(
        f"{PROXY}/v4/issues",
        b'{"title": "x"}',
        content_type="application/json",
        HTTP_COOKIE="sessionid=broker-session",
        HTTP_CONNECTION="close, X-Private",
        HTTP_X_PRIVATE="named by Connection",
        HTTP_KEEP_ALIVE="timeout=5",
        HTTP_PROXY_AUTHORIZATION="Basic c2VjcmV0",
        HTTP_X_FORWARDED_FOR="10.0.0.1",
        HTTP_X_REQUEST_ID="kept-1",
        **headers,
    )

    assert response.status_code == 200, body_of(response)
    [received] = upstream.requests
    sent = received.headers
    assert received.body == b'{"title": "x"}' and sent["content-type"] == "application/json"
    assert sent["x-request-id"] == "kept-1"
    assert sent["authorization"] == f"Bearer {grant.unseal('access_token')}"
    for dropped in (
        "cookie",
        "x-private",
        "keep-alive",
        "proxy-authorization",
        "x-forwarded-for",
        "broker-user",
    ):
        assert dropped not in sent, dropped
    assert headers["HTTP_AUTHORIZATION"].split()[1] not in json.dumps(sent)


@pytest.mark.parametrize(
    ("path", "extra", "status", "error"),
    [
        ("/v4/user", {"HTTP_BROKER_USER": ""}, 400, "invalid_request"),
        ("/v4/user", {"HTTP_BROKER_GRANT": "not-a-uuid"}, 400, "invalid_request"),
        ("/v4/user", {"HTTP_BROKER_USER": "nobody"}, 404, "not_found"),
        ("/v4/user", {"HTTP_AUTHORIZATION": "Bearer forged"}, 401, "invalid_token"),
        ("/v4/../../admin/", {}, 400, "invalid_path"),
        ("/v4/%2e%2e/secret", {}, 400, "invalid_path"),
        ("//evil.example/x", {}, 400, "invalid_path"),
        ("/@evil.example/x", {}, 400, "invalid_path"),
        ("/v4\\..\\x", {}, 400, "invalid_path"),
        ("/v4/%252e%252e/x", {}, 400, "invalid_path"),
        ("/v4/./user", {}, 400, "invalid_path"),
    ],
)
def test_refusals_carry_broker_error_and_forward_nothing(
    api, upstream, grant, headers, path, extra, status, error
):
    response = api.get(f"{PROXY}{path}", **{**headers, **extra})

    assert response.status_code == status, body_of(response)
    assert response["Broker-Error"] == error == response.json()["error"]
    assert upstream.requests == []


def test_an_unknown_app_is_404_with_broker_error(api, grant, headers):
    response = api.get("/api/v1/proxy/nope/x", **headers)
    assert (response.status_code, response["Broker-Error"]) == (404, "not_found")


def test_a_grant_of_another_app_is_not_found(api, upstream, owner, grant, headers):
    other = ProviderApp.objects.create(slug="other", kind="oauth2", name="O", client_id="o")
    elsewhere = consented_grant(owner, other)
    response = api.get(
        f"{PROXY}/v4/user",
        **{**headers, "HTTP_BROKER_USER": "", "HTTP_BROKER_GRANT": str(elsewhere.pk)},
    )
    assert response.status_code == 404 and upstream.requests == []


def test_a_body_over_the_limit_is_413_and_nothing_is_sent(api, upstream, grant, headers, settings):
    settings.BROKER_PROXY_MAX_REQUEST_BYTES = 100
    response = api.post(f"{PROXY}/v4/issues", b"x" * 101, content_type="text/plain", **headers)
    assert (response.status_code, response["Broker-Error"]) == (413, "request_too_large")
    assert upstream.requests == []
    exactly = api.post(f"{PROXY}/v4/issues", b"x" * 100, content_type="text/plain", **headers)
    assert exactly.status_code == 200 and upstream.requests[0].body == b"x" * 100


def test_every_call_is_audited_without_its_query_string(api, upstream, grant, headers, service):
    response = api.get(f"{PROXY}/v4/user", {"private_token": "s3cr3t"}, **headers)
    body_of(response)

    [event] = audit_events(action="proxy.called")
    assert event.service == service[0].client_id and event.subject_user == "alice"
    assert event.grant_id == grant.pk and event.provider == "upstream"
    assert event.detail["method"] == "GET" and event.detail["path"] == "/v4/user"
    assert event.detail["status"] == 200 and event.detail["duration_ms"] >= 0
    assert "s3cr3t" not in json.dumps(event.detail)


def test_a_refusal_is_audited_with_what_was_asked(api, upstream, grant, headers, service):
    api.get(f"{PROXY}/v4/%2e%2e/x", {"q": "s3cr3t"}, **headers)
    [event] = audit_events(action="proxy.denied")
    assert event.outcome == "denied" and event.detail["reason"] == "invalid_path"
    assert event.detail["method"] == "GET" and "s3cr3t" not in json.dumps(event.detail)


# --- rules ---------------------------------------------------------------------------


def test_method_and_path_rules_forward_only_what_they_allow(api, upstream, app, grant, service):
    AccessRule.objects.filter(service=service[0]).update(
        proxy_methods=["GET"], proxy_paths=["/v4/user", "/v4/projects/*/issues/**"]
    )
    headers = proxy_headers(api, service)
    denied = [
        api.post(f"{PROXY}/v4/user", b"{}", content_type="application/json", **headers),
        api.get(f"{PROXY}/v4/users", **headers),
        api.get(f"{PROXY}/v4/projects/7", **headers),
        api.get(f"{PROXY}/v4/projects/7/8/issues", **headers),
    ]
    for response in denied:
        assert (response.status_code, response["Broker-Error"]) == (403, "access_denied")
    assert upstream.requests == []
    assert len(audit_events(action="proxy.denied")) == len(denied)

    for path in ("/v4/user", "/v4/projects/7/issues", "/v4/projects/7/issues/1/notes"):
        body_of(api.get(f"{PROXY}{path}", **headers))
    assert [r.path for r in upstream.requests] == [
        "/api/v4/user",
        "/api/v4/projects/7/issues",
        "/api/v4/projects/7/issues/1/notes",
    ]


def test_proxy_only_hands_out_no_token_nor_signature(api, upstream, app, grant, service, headers):
    AccessRule.objects.filter(service=service[0]).update(proxy_only=True)
    token_request = api.post(
        "/api/v1/access-token",
        {"user": "alice", "provider": "upstream"},
        content_type="application/json",
        HTTP_AUTHORIZATION=headers["HTTP_AUTHORIZATION"],
    )
    assert (token_request.status_code, token_request.json()["error"]) == (403, "proxy_only")
    assert grant.unseal("access_token") not in token_request.content.decode()
    assert not audit_events(action="token.issued")

    proxied = api.get(f"{PROXY}/v4/user", **headers)
    assert proxied.status_code == 200 and len(upstream.requests) == 1


def test_proxy_only_refuses_token_exchange(api, idp, owner, app, grant, service):
    ExternalIdentity.objects.create(user=owner, issuer=idp.issuer, subject="alice-sub")
    client, secret = service
    client.subject_audiences = [AUDIENCE]
    client.save()
    AccessRule.objects.filter(service=client).update(proxy_only=True)
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": idp.token("alice-sub"),
        "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
        "audience": "upstream",
    }
    response = post_form(api, form, HTTP_AUTHORIZATION=basic(client.client_id, secret))
    assert (response.status_code, response.json()["error"]) == (403, "proxy_only")
    assert "access_token" not in response.json()
    [event] = audit_events(action="token.exchange_denied")
    assert event.detail["reason"] == "proxy_only"


def test_on_behalf_of_rules_need_the_users_token_at_the_proxy_too(
    api, idp, owner, upstream, app, grant, service
):
    ExternalIdentity.objects.create(user=owner, issuer=idp.issuer, subject="alice-sub")
    client, secret = service
    client.subject_audiences = [AUDIENCE]
    client.save()
    AccessRule.objects.filter(service=client).update(on_behalf_of=True)
    bearer = f"Bearer {fetch_token(api, client, secret)['access_token']}"

    by_name = api.get(f"{PROXY}/v4/user", HTTP_AUTHORIZATION=bearer, HTTP_BROKER_USER="alice")
    assert (by_name.status_code, by_name["Broker-Error"]) == (403, "on_behalf_of_required")
    forged = api.get(
        f"{PROXY}/v4/user",
        HTTP_AUTHORIZATION=bearer,
        HTTP_BROKER_SUBJECT_TOKEN=idp.unsigned("alice-sub"),
    )
    assert (forged.status_code, forged["Broker-Error"]) == (400, "invalid_request")
    assert upstream.requests == []

    acting = api.get(
        f"{PROXY}/v4/user",
        HTTP_AUTHORIZATION=bearer,
        HTTP_BROKER_SUBJECT_TOKEN=idp.token("alice-sub"),
    )
    assert acting.status_code == 200 and len(upstream.requests) == 1
    body_of(acting)  # the call is audited once its answer has been relayed
    [event] = audit_events(action="proxy.called")
    assert event.detail["on_behalf_of"] is True and event.subject_user == "alice"


def test_addaccessrule_sets_and_checks_the_proxy_rules(app):
    service, _ = service_and_secret()
    out = StringIO()
    call_command(
        "addaccessrule",
        service.client_id,
        "--provider",
        "upstream",
        "--proxy-only",
        "--proxy-methods",
        "get,POST",
        "--proxy-paths",
        "/ex/jira/*/rest/api/3/**",
        "--proxy-paths",
        "/me",
        "--json",
        stdout=out,
    )
    result = json.loads(out.getvalue())
    assert result["proxy_only"] is True and result["proxy_methods"] == ["GET", "POST"]
    rule = AccessRule.objects.get(service=service)
    assert rule.proxy_paths == ["/ex/jira/*/rest/api/3/**", "/me"] and rule.proxy_only
    for bad in (
        ["--proxy-methods", "G T"],
        ["--proxy-paths", "/a/../b"],
        ["--proxy-paths", "/a*"],
        ["--proxy-paths", "/rest/api/2/issue/..;"],
        ["--proxy-paths", "/a;x=1/**"],
    ):
        with pytest.raises(CommandError):
            call_command("addaccessrule", service.client_id, "--provider", "upstream", *bad)


# --- paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/rest/api/2/myself", "rest/api/2/myself", True),
        ("/rest/api/2/myself", "rest/api/2/myself/x", False),
        ("/ex/jira/*/rest/api/3/**", "ex/jira/cloud-1/rest/api/3/search", True),
        ("/ex/jira/*/rest/api/3/**", "ex/jira/cloud-1/rest/api/3", True),
        ("/ex/jira/*/rest/api/3/**", "ex/jira/a/b/rest/api/3/search", False),
        ("/ex/jira/*/rest/api/3/**", "ex/confluence/cloud-1/rest/api/3/search", False),
        ("**", "anything/at/all", True),
        ("/a/**/z", "a/z", True),
        ("/a/**/z", "a/b/c/z", True),
        ("/a/**/z", "a/b/c", False),
    ],
)
def test_path_patterns(pattern, path, expected):
    assert matches(pattern, segments_of(path)) is expected


def test_a_pattern_with_several_double_stars_matches_a_long_path_quickly():
    segments = segments_of("/".join(["a"] * 1500))
    started = time.monotonic()
    assert matches("/**/**/**/**/z", segments) is False
    assert matches("/**/a/**/a/**", segments) is True
    assert time.monotonic() - started < 2


def test_paths_are_forwarded_encoded_again():
    assert encoded(segments_of("wiki/spaces/Café/pages")) == "/wiki/spaces/Caf%C3%A9/pages"
    assert encoded(segments_of("rest/api/2/issue/ACME-1:x")) == "/rest/api/2/issue/ACME-1:x"
    for bad in ("a//b", "a/./b", "a/../b", "..", "a/b%2fc", "a b", "a\\b", "a/@b", "a/b\x00"):
        with pytest.raises(PathRefused):
            segments_of(bad)
    # What Tomcat, Jetty or Spring would read as a dot segment or strip (issue 25, item 2).
    for bad in ("a/..;/b", "a/..;x=1", "a/b;jsessionid=1", "a/...", "a/\uff0e\uff0e", "a/b\u202e"):
        with pytest.raises(PathRefused):
            segments_of(bad)


@pytest.mark.django_db(transaction=True)
def test_behind_gunicorn_encoded_separators_are_refused(tmp_path, upstream, app, grant, service):
    """gunicorn passes the request line as sent (RAW_URI): `%2F`, `%2e` and the like are
    refused there, where a server that decodes the path first would make them separators."""
    client, secret = service
    with gunicorn(tmp_path / "gunicorn.log", WEB_CONCURRENCY="1") as url:
        token = requests.post(
            f"{url}/api/v1/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(client.client_id, secret),
            timeout=10,
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Broker-User": "alice"}
        for path in (
            "v4%2Fuser",
            "v4%2fuser",
            "v4/%2E%2E/user",
            "v4%5Cuser",
            "v4/%40x",
            "v4/..%3B/user",
            "v4/..;/user",
            "v4/user;jsessionid=1",
        ):
            status, answer, _ = raw_get(url, f"/api/v1/proxy/upstream/{path}", headers)
            assert (status, answer["Broker-Error"]) == (400, "invalid_path"), path
        assert upstream.requests == []
        status, _, _ = raw_get(url, "/api/v1/proxy/upstream/v4/user", headers)
    assert status == 200 and [r.path for r in upstream.requests] == ["/api/v4/user"]


@pytest.fixture
def jira_upstream(upstream, jira_dc, owner, service) -> Grant:
    """An OAuth 1.0a Data Center app whose server is the recording upstream."""
    jira_dc.base_url = upstream.url
    jira_dc.save()
    AccessRule.objects.create(service=service[0], provider_app=jira_dc)
    return consented_grant(owner, jira_dc, access_expires_at=None)


def test_data_center_writes_are_signed_and_carry_the_xsrf_header(
    api, upstream, jira_upstream, headers
):
    proxy = "/api/v1/proxy/jira-acme/rest/api/2/issue"
    api.post(proxy, "summary=Hi", content_type="application/x-www-form-urlencoded", **headers)
    body_of(api.get(f"{proxy}/ACME-1", **headers))

    post, get = upstream.requests
    assert post.headers["x-atlassian-token"] == "no-check"
    assert "x-atlassian-token" not in get.headers
    for received in (post, get):
        assert received.headers["authorization"].startswith("OAuth ")
        assert 'oauth_consumer_key="broker"' in received.headers["authorization"]


def test_a_form_body_that_cannot_be_signed_is_refused_unsent(api, upstream, jira_upstream, headers):
    response = api.post(
        "/api/v1/proxy/jira-acme/rest/api/2/issue",
        b"summary=\xff\xfe",
        content_type="application/x-www-form-urlencoded",
        **headers,
    )
    assert (response.status_code, response["Broker-Error"]) == (400, "invalid_request")
    assert upstream.requests == []


def test_a_grant_that_needs_the_user_again_is_409_unsent(api, upstream, grant, headers):
    Grant.objects.filter(pk=grant.pk).update(status=Grant.Status.RECONNECT_REQUIRED)
    response = api.get(f"{PROXY}/v4/user", **headers)
    assert (response.status_code, response["Broker-Error"]) == (409, "reconnect_required")
    assert upstream.requests == []


@pytest.mark.django_db(transaction=True)  # the other process's thread writes the grant
def test_a_token_being_refreshed_is_not_sent_upstream_until_the_refresh_commits(
    api, upstream, grant, headers
):
    """Another process is refreshing the grant (its lock held, its refresh marked in
    flight): the provider may already have retired the stored token, so the proxy waits
    for the refresh and sends the new token, never the one being replaced."""
    stored = grant.unseal("access_token")
    with refreshing_elsewhere(grant):
        response = api.get(f"{PROXY}/v4/user", **headers)

    assert response.status_code == 200, body_of(response)
    [received] = upstream.requests
    assert received.headers["authorization"] == f"Bearer {REFRESHED_ACCESS_TOKEN}"
    assert received.headers["authorization"] != f"Bearer {stored}"
