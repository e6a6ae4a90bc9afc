"""The sandbox provider, driven over real HTTP with requests and Authlib's clients."""

import base64
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import (
    OAuth1Auth,
    OAuth1Session,
    OAuth2Session,
)
from authlib.oauth1 import SIGNATURE_HMAC_SHA1, SIGNATURE_RSA_SHA1

try:
    from tests.sandbox_server import SandboxServer, start_sandbox
except ImportError:  # tests/ is not a package on this branch yet: pytest put it on sys.path
    from sandbox_server import SandboxServer, start_sandbox

pytestmark = pytest.mark.sandbox

BROKER_URL = "http://localhost:8999"
OAUTH1_CALLBACK = f"{BROKER_URL}/oauth1/callback/sandbox-jira"
TIMEOUT = 10


def read_toml(path: Path) -> dict:
    import tomllib

    return tomllib.loads(path.read_text())


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxServer]:
    server = start_sandbox(tmp_path_factory.mktemp("sandbox"), BROKER_URL, access_token_seconds=2)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def apps(sandbox: SandboxServer) -> dict:
    return read_toml(sandbox.providers_file)["apps"]


@pytest.fixture(autouse=True)
def clear_faults(sandbox: SandboxServer) -> Iterator[None]:
    yield
    sandbox.faults(mode="none")


# -- browser helpers --------------------------------------------------------------------


class FormParser(HTMLParser):
    """Collects the inputs of a page's forms (the consent form is the only one)."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[str, str] = {}
        self.buttons: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "input" and values.get("type") == "hidden" and "name" in values:
            self.inputs[values["name"]] = values.get("value", "")
        if tag == "button":
            self.buttons.append(values.get("name", ""))


def parse_form(html: str) -> FormParser:
    parser = FormParser()
    parser.feed(html)
    return parser


def signed_in_browser(sandbox: SandboxServer, username: str) -> requests.Session:
    browser = requests.Session()
    page = browser.get(f"{sandbox.url}/accounts/login/", timeout=TIMEOUT)
    assert 'name="username"' in page.text and "Sign in" in page.text
    response = browser.post(
        f"{sandbox.url}/accounts/login/",
        data={
            "username": username,
            "password": f"{username}-sandbox",
            "csrfmiddlewaretoken": browser.cookies["sandbox_csrftoken"],
        },
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert response.status_code == 302, response.text
    assert "sandbox_sessionid" in browser.cookies
    return browser


def submit_consent(browser: requests.Session, url: str, button: str) -> str:
    """Open a consent page, press Allow or Deny, and return the redirect target."""
    page = browser.get(url, timeout=TIMEOUT)
    assert page.status_code == 200, page.text
    form = parse_form(page.text)
    assert {"allow", "deny"} <= set(form.buttons)
    data = {**form.inputs, button: button.title()}
    response = browser.post(page.url, data=data, allow_redirects=False, timeout=TIMEOUT)
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}


# -- OAuth 2.0 helpers ------------------------------------------------------------------


def authorization_code(
    sandbox: SandboxServer,
    app: dict,
    slug: str,
    username: str = "alice",
    path: str = "/oauth/authorize",
    pkce: bool = False,
) -> tuple[str, str]:
    """Run the browser part of the code flow; return (code, code_verifier)."""
    client = OAuth2Session(
        app["client_id"],
        redirect_uri=f"{BROKER_URL}/oauth/callback/{slug}",
        scope=" ".join(app["scopes"]),
        code_challenge_method="S256" if pkce else None,
    )
    verifier = generate_token(48)
    url, state = client.create_authorization_url(
        f"{sandbox.url}{path}", code_verifier=verifier if pkce else None
    )
    location = submit_consent(signed_in_browser(sandbox, username), url, "allow")
    assert location.startswith(f"{BROKER_URL}/oauth/callback/{slug}?")
    params = query_of(location)
    assert params["state"] == state
    return params["code"], verifier


def json_token_request(sandbox: SandboxServer, app: dict, **params: str) -> requests.Response:
    body = {
        "client_id": app["client_id"],
        "client_secret": app["client_secret"],
        **params,
    }
    return requests.post(f"{sandbox.url}/oauth/token", json=body, timeout=TIMEOUT)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cloud_tokens(sandbox: SandboxServer, apps: dict, username: str = "alice") -> dict:
    app = apps["sandbox"]
    code, _ = authorization_code(sandbox, app, "sandbox", username)
    response = json_token_request(
        sandbox,
        app,
        grant_type="authorization_code",
        code=code,
        redirect_uri=f"{BROKER_URL}/oauth/callback/sandbox",
    )
    assert response.status_code == 200, response.text
    return response.json()


# -- OAuth 2.0 ---------------------------------------------------------------------------


def test_providers_file_lists_every_app(sandbox: SandboxServer, apps: dict) -> None:
    assert set(apps) == {
        "sandbox",
        "sandbox-dc",
        "sandbox-generic",
        "sandbox-jira",
        "sandbox-jira-hmac",
        "sandbox-api-token",
    }
    assert apps["sandbox"]["endpoints"]["token"] == f"{sandbox.url}/oauth/token"
    key_path = Path(apps["sandbox-jira"]["private_key"].removeprefix("file:"))
    assert key_path.is_absolute() and key_path.stat().st_mode & 0o777 == 0o600


def test_code_flow_with_json_body_then_identity_and_sites(
    sandbox: SandboxServer, apps: dict
) -> None:
    app = apps["sandbox"]
    # Atlassian's extra parameters are ignored; PKCE is not used (Cloud does not have it).
    client = OAuth2Session(
        app["client_id"],
        redirect_uri=f"{BROKER_URL}/oauth/callback/sandbox",
        scope=" ".join(app["scopes"]),
    )
    url, state = client.create_authorization_url(
        app["endpoints"]["authorize"], audience="api.atlassian.com", prompt="consent"
    )
    location = submit_consent(signed_in_browser(sandbox, "alice"), url, "allow")
    code = query_of(location)["code"]
    assert query_of(location)["state"] == state

    response = json_token_request(
        sandbox,
        app,
        grant_type="authorization_code",
        code=code,
        redirect_uri=f"{BROKER_URL}/oauth/callback/sandbox",
    )
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 2
    assert set(token["scope"].split()) == {
        "read:me",
        "read:jira-work",
        "offline_access",
    }
    assert token["refresh_token"]

    me = requests.get(app["endpoints"]["identity"], headers=bearer(token["access_token"]))
    assert me.status_code == 200
    assert me.json() == {
        **me.json(),
        "account_id": "sandbox-alice",
        "email": "alice@sandbox.example",
        "name": "Alice Anders",
        "nickname": "alice",
    }
    sites = requests.get(app["endpoints"]["resources"], headers=bearer(token["access_token"]))
    assert sites.status_code == 200
    assert [site["name"] for site in sites.json()] == ["Acme Jira", "Globex Confluence"]
    assert sites.json()[0]["url"] == f"{sandbox.url}/sites/acme"
    assert set(sites.json()[0]["scopes"]) == set(token["scope"].split())

    # A code works once.
    again = json_token_request(
        sandbox,
        app,
        grant_type="authorization_code",
        code=code,
        redirect_uri=f"{BROKER_URL}/oauth/callback/sandbox",
    )
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_data_center_code_flow_with_query_string_and_pkce(
    sandbox: SandboxServer, apps: dict
) -> None:
    app = apps["sandbox-dc"]
    redirect_uri = f"{BROKER_URL}/oauth/callback/sandbox-dc"
    code, verifier = authorization_code(
        sandbox, app, "sandbox-dc", path="/rest/oauth2/latest/authorize", pkce=True
    )
    token_url = f"{sandbox.url}/rest/oauth2/latest/token"
    params = {
        "grant_type": "authorization_code",
        "client_id": app["client_id"],
        "client_secret": app["client_secret"],
        "code": code,
        "redirect_uri": redirect_uri,
    }
    wrong = requests.post(token_url, params={**params, "code_verifier": "x" * 50}, timeout=TIMEOUT)
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"

    code, verifier = authorization_code(
        sandbox, app, "sandbox-dc", path="/rest/oauth2/latest/authorize", pkce=True
    )
    params.update(code=code, code_verifier=verifier)
    response = requests.post(token_url, params=params, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["scope"] == "READ WRITE"

    # Data Center wants the consent's redirect_uri repeated on refresh: a bare
    # invalid_grant without it or with another one, and the token is not consumed.
    refresh_params = {
        "grant_type": "refresh_token",
        "client_id": app["client_id"],
        "client_secret": app["client_secret"],
        "refresh_token": token["refresh_token"],
    }
    for wrong_redirect in ({}, {"redirect_uri": "https://moved.example/oauth/callback/x"}):
        refused = requests.post(
            token_url, params={**refresh_params, **wrong_redirect}, timeout=TIMEOUT
        )
        assert refused.status_code == 400
        assert refused.json() == {"error": "invalid_grant"}
    refreshed = requests.post(
        token_url, params={**refresh_params, "redirect_uri": redirect_uri}, timeout=TIMEOUT
    )
    assert refreshed.status_code == 200, refreshed.text
    myself = requests.get(
        f"{sandbox.url}/rest/api/2/myself",
        headers=bearer(refreshed.json()["access_token"]),
    )
    assert myself.status_code == 200
    assert myself.json()["name"] == "alice"


def test_denied_consent_redirects_with_access_denied_and_state(
    sandbox: SandboxServer, apps: dict
) -> None:
    app = apps["sandbox"]
    query = urlencode(
        {
            "client_id": app["client_id"],
            "response_type": "code",
            "redirect_uri": f"{BROKER_URL}/oauth/callback/sandbox",
            "scope": "read:me",
            "state": "s-123",
        }
    )
    browser = signed_in_browser(sandbox, "bob")
    location = submit_consent(browser, f"{sandbox.url}/oauth/authorize?{query}", "deny")
    assert query_of(location) == {"error": "access_denied", "state": "s-123"}


def test_authorize_sends_anonymous_users_to_the_sandbox_login(
    sandbox: SandboxServer, apps: dict
) -> None:
    response = requests.get(
        f"{sandbox.url}/oauth/authorize?client_id={apps['sandbox']['client_id']}",
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/accounts/login/?next=")


def test_refresh_rotates_and_reuse_kills_the_family(sandbox: SandboxServer, apps: dict) -> None:
    app = apps["sandbox-generic"]
    code, _ = authorization_code(sandbox, app, "sandbox-generic")
    client = OAuth2Session(
        app["client_id"],
        app["client_secret"],
        redirect_uri=f"{BROKER_URL}/oauth/callback/sandbox-generic",
    )
    # Authlib: form body, client_secret_basic.
    first = client.fetch_token(app["endpoints"]["token"], code=code)
    second = client.refresh_token(app["endpoints"]["token"], refresh_token=first["refresh_token"])
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert requests.get(app["endpoints"]["identity"], headers=bearer(second["access_token"])).ok

    reuse = json_token_request(
        sandbox, app, grant_type="refresh_token", refresh_token=first["refresh_token"]
    )
    assert reuse.status_code == 400
    assert reuse.json()["error"] == "invalid_grant"
    # Reuse of a superseded token revokes the whole family, the newest token included.
    newest = json_token_request(
        sandbox, app, grant_type="refresh_token", refresh_token=second["refresh_token"]
    )
    assert newest.status_code == 400
    assert newest.json()["error"] == "invalid_grant"


def test_token_history_dates_rotated_tokens_and_counts_refresh_reuse(
    sandbox: SandboxServer, apps: dict
) -> None:
    app = apps["sandbox-generic"]
    code, _ = authorization_code(sandbox, app, "sandbox-generic")
    client = OAuth2Session(
        app["client_id"],
        app["client_secret"],
        redirect_uri=f"{BROKER_URL}/oauth/callback/sandbox-generic",
    )
    first = client.fetch_token(app["endpoints"]["token"], code=code)
    digests = [hashlib.sha256(first["access_token"].encode()).hexdigest()]

    def history() -> dict:
        response = requests.post(
            f"{sandbox.url}/_sandbox/token-history", json={"access_tokens": digests}, timeout=10
        )
        assert response.status_code == 200
        return response.json()

    before = history()
    assert list(before["live"]) == digests and before["retired"] == {}
    rotated_after = time.time() * 1000
    second = client.refresh_token(app["endpoints"]["token"], refresh_token=first["refresh_token"])
    digests.append(hashlib.sha256(second["access_token"].encode()).hexdigest())
    after_rotation = history()
    assert after_rotation["retired"][digests[0]] >= rotated_after - 1000
    assert list(after_rotation["live"]) == [digests[1]]
    assert (
        after_rotation["refresh_tokens_presented_twice"] == before["refresh_tokens_presented_twice"]
    )
    # A 500 consumes nothing: the same token sent again after it is not a reuse.
    sandbox.faults(mode="error500", times=1)
    failed = json_token_request(
        sandbox, app, grant_type="refresh_token", refresh_token=second["refresh_token"]
    )
    assert failed.status_code == 500
    assert history()["refresh_tokens_presented_twice"] == before["refresh_tokens_presented_twice"]
    json_token_request(
        sandbox, app, grant_type="refresh_token", refresh_token=first["refresh_token"]
    )
    reused = history()
    assert reused["refresh_tokens_presented_twice"] == before["refresh_tokens_presented_twice"] + 1
    assert reused["reuse_window_seconds"] == 0  # the strict sandbox: every reuse is late
    assert (
        reused["refresh_tokens_reused_outside_window"]
        == before["refresh_tokens_reused_outside_window"] + 1
    )
    assert digests[1] in reused["retired"]  # the reuse revoked the family
    bad = requests.post(f"{sandbox.url}/_sandbox/token-history", json={"access_tokens": 1})
    assert bad.status_code == 400


def test_access_tokens_expire(sandbox: SandboxServer, apps: dict) -> None:
    token = cloud_tokens(sandbox, apps)
    time.sleep(2.5)
    response = requests.get(f"{sandbox.url}/me", headers=bearer(token["access_token"]))
    assert response.status_code == 401
    assert response.json()["code"] == 401


def test_revocation_endpoint_revokes_the_refresh_token(sandbox: SandboxServer, apps: dict) -> None:
    app = apps["sandbox"]
    token = cloud_tokens(sandbox, apps)
    response = requests.post(
        app["endpoints"]["revoke"],
        data={"token": token["refresh_token"], "token_type_hint": "refresh_token"},
        auth=(app["client_id"], app["client_secret"]),
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    refresh = json_token_request(
        sandbox, app, grant_type="refresh_token", refresh_token=token["refresh_token"]
    )
    assert refresh.json()["error"] == "invalid_grant"
    me = requests.get(f"{sandbox.url}/me", headers=bearer(token["access_token"]))
    assert me.status_code == 401


def test_the_account_page_lists_authorized_apps_and_removes_their_access(
    sandbox: SandboxServer, apps: dict
) -> None:
    """The sandbox's own "Connected apps" page, the `account` endpoint of its apps (the
    broker's Disconnect page links there, not to Atlassian's)."""
    app = apps["sandbox"]
    assert app["endpoints"]["account"] == f"{sandbox.url}/manage-profile/apps"
    token = cloud_tokens(sandbox, apps, "bob")
    browser = signed_in_browser(sandbox, "bob")
    page = browser.get(app["endpoints"]["account"], timeout=TIMEOUT)
    assert page.status_code == 200 and 'data-app="Sandbox Cloud"' in page.text
    form = parse_form(page.text)
    response = browser.post(
        app["endpoints"]["account"],
        data=form.inputs,  # the CSRF token and the app to remove
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert response.status_code == 302
    refresh = json_token_request(
        sandbox, app, grant_type="refresh_token", refresh_token=token["refresh_token"]
    )
    assert refresh.json()["error"] == "invalid_grant"
    me = requests.get(f"{sandbox.url}/me", headers=bearer(token["access_token"]))
    assert me.status_code == 401
    again = browser.get(app["endpoints"]["account"], timeout=TIMEOUT)
    assert "No app is connected." in again.text


def test_wrong_client_secret_is_rejected(sandbox: SandboxServer, apps: dict) -> None:
    app = {**apps["sandbox"], "client_secret": "wrong"}
    response = json_token_request(sandbox, app, grant_type="refresh_token", refresh_token="x")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_resources_reject_missing_and_bogus_tokens(sandbox: SandboxServer) -> None:
    for path in ("/me", "/oauth/token/accessible-resources"):
        assert requests.get(f"{sandbox.url}{path}", timeout=TIMEOUT).status_code == 401
        bogus = requests.get(f"{sandbox.url}{path}", headers=bearer("nope"), timeout=TIMEOUT)
        assert bogus.status_code == 401


# -- OAuth 1.0a --------------------------------------------------------------------------


def oauth1_session(sandbox: SandboxServer, apps: dict, slug: str, **kwargs: str) -> OAuth1Session:
    app = apps[slug]
    if app["signature_method"] == "RSA-SHA1":
        key = Path(app["private_key"].removeprefix("file:")).read_text()
        return OAuth1Session(
            app["consumer_key"],
            signature_method=SIGNATURE_RSA_SHA1,
            rsa_key=key,
            redirect_uri=OAUTH1_CALLBACK,
            **kwargs,
        )
    return OAuth1Session(
        app["consumer_key"],
        app["consumer_secret"],
        signature_method=SIGNATURE_HMAC_SHA1,
        redirect_uri=OAUTH1_CALLBACK,
        **kwargs,
    )


def oauth1_dance(
    sandbox: SandboxServer, apps: dict, slug: str, username: str = "alice"
) -> OAuth1Session:
    """The three legs; returns a session holding the access token."""
    base = apps[slug]["base_url"]
    client = oauth1_session(sandbox, apps, slug)
    request_token = client.fetch_request_token(f"{base}/plugins/servlet/oauth/request-token")
    assert request_token["oauth_callback_confirmed"] == "true"
    url = client.create_authorization_url(f"{base}/plugins/servlet/oauth/authorize")
    location = submit_consent(signed_in_browser(sandbox, username), url, "allow")
    assert location.startswith(OAUTH1_CALLBACK)
    client.parse_authorization_response(location)
    access = client.fetch_access_token(f"{base}/plugins/servlet/oauth/access-token")
    assert access["oauth_expires_in"] == "157680000"
    assert access["oauth_authorization_expires_in"] == "157680000"
    assert access["oauth_session_handle"]
    return client


@pytest.mark.parametrize("slug", ["sandbox-jira", "sandbox-jira-hmac"])
def test_oauth1_three_legged_flow(sandbox: SandboxServer, apps: dict, slug: str) -> None:
    client = oauth1_dance(sandbox, apps, slug)
    myself = client.get(f"{sandbox.url}/rest/api/2/myself")
    assert myself.status_code == 200, myself.text
    assert myself.json() == {
        **myself.json(),
        "name": "alice",
        "displayName": "Alice Anders",
        "emailAddress": "alice@sandbox.example",
        "active": True,
    }
    assert myself.json()["key"].startswith("JIRAUSER")


@pytest.fixture(scope="module")
def jira(sandbox: SandboxServer, apps: dict) -> OAuth1Session:
    return oauth1_dance(sandbox, apps, "sandbox-jira")


def test_signed_get_with_query(sandbox: SandboxServer, jira: OAuth1Session) -> None:
    response = jira.get(f"{sandbox.url}/rest/api/2/echo", params={"jql": "project = ACME", "n": 2})
    assert response.status_code == 200, response.text
    assert response.json()["query"] == {"jql": "project = ACME", "n": "2"}
    assert response.json()["user"] == "alice"


def test_signed_post_with_form_and_put_delete(sandbox: SandboxServer, jira: OAuth1Session) -> None:
    url = f"{sandbox.url}/rest/api/2/echo"
    posted = jira.post(url, data={"summary": "Hello & welcome", "n": "1"})
    assert posted.status_code == 200, posted.text
    assert posted.json()["form"] == {"summary": "Hello & welcome", "n": "1"}
    put = jira.put(f"{url}?a=1", data={"x": "y"})
    assert put.status_code == 200, put.text
    assert (put.json()["method"], put.json()["query"], put.json()["form"]) == (
        "PUT",
        {"a": "1"},
        {"x": "y"},
    )
    deleted = jira.delete(f"{url}?id=7")
    assert deleted.status_code == 200
    assert deleted.json()["method"] == "DELETE"


def test_signed_post_with_json(sandbox: SandboxServer, jira: OAuth1Session) -> None:
    response = jira.post(f"{sandbox.url}/rest/api/2/echo", json={"fields": {"summary": "Hi"}})
    assert response.status_code == 200, response.text
    assert response.json()["json"] == {"fields": {"summary": "Hi"}}
    assert response.json()["form"] == {}


def signed(
    jira: OAuth1Session, method: str, url: str, **kwargs: object
) -> requests.PreparedRequest:
    return requests.Request(method, url, auth=jira.auth, **kwargs).prepare()


def oauth_problem(response: requests.Response) -> str:
    assert response.status_code == 401, response.text
    return parse_qs(response.text)["oauth_problem"][0]


def test_tampered_requests_are_rejected(sandbox: SandboxServer, jira: OAuth1Session) -> None:
    url = f"{sandbox.url}/rest/api/2/echo"
    with requests.Session() as http:
        tampered_url = signed(jira, "GET", url, params={"n": "1"})
        tampered_url.url = tampered_url.url.replace("n=1", "n=2")
        assert oauth_problem(http.send(tampered_url)) == "signature_invalid"

        tampered_method = signed(jira, "GET", url)
        tampered_method.method = "DELETE"
        assert oauth_problem(http.send(tampered_method)) == "signature_invalid"

        tampered_body = signed(jira, "POST", url, data={"amount": "1"})
        tampered_body.body = "amount=1000"
        tampered_body.headers["Content-Length"] = str(len(tampered_body.body))
        assert oauth_problem(http.send(tampered_body)) == "signature_invalid"

        replayed = signed(jira, "GET", url)
        assert http.send(replayed).status_code == 200
        assert oauth_problem(http.send(replayed)) == "nonce_used"

        unsigned = http.get(url, timeout=TIMEOUT)
        assert unsigned.status_code == 401


def test_rsa_consumer_rejects_hmac(sandbox: SandboxServer, apps: dict) -> None:
    auth = OAuth1Auth(
        apps["sandbox-jira"]["consumer_key"],
        "guessed-secret",
        redirect_uri=OAUTH1_CALLBACK,
        signature_method=SIGNATURE_HMAC_SHA1,
    )
    response = requests.post(
        f"{sandbox.url}/plugins/servlet/oauth/request-token", auth=auth, timeout=TIMEOUT
    )
    assert oauth_problem(response) == "signature_method_rejected"


def test_unknown_consumer_and_revoked_token(sandbox: SandboxServer, apps: dict) -> None:
    auth = OAuth1Auth("nobody", "secret", redirect_uri=OAUTH1_CALLBACK)
    response = requests.post(
        f"{sandbox.url}/plugins/servlet/oauth/request-token", auth=auth, timeout=TIMEOUT
    )
    assert oauth_problem(response) == "consumer_key_unknown"


def test_oauth1_deny_returns_denied_verifier(sandbox: SandboxServer, apps: dict) -> None:
    base = apps["sandbox-jira"]["base_url"]
    client = oauth1_session(sandbox, apps, "sandbox-jira")
    client.fetch_request_token(f"{base}/plugins/servlet/oauth/request-token")
    url = client.create_authorization_url(f"{base}/plugins/servlet/oauth/authorize")
    location = submit_consent(signed_in_browser(sandbox, "alice"), url, "deny")
    params = query_of(location)
    assert params["oauth_verifier"] == "denied"
    client.parse_authorization_response(location)
    response = client.post(f"{base}/plugins/servlet/oauth/access-token")
    assert oauth_problem(response) == "permission_denied"


# -- test switches -------------------------------------------------------------------


def test_faults_ratelimit_and_error_then_clear(sandbox: SandboxServer, apps: dict) -> None:
    app = apps["sandbox"]
    sandbox.reset_counters()
    sandbox.faults(mode="ratelimit", retry_after=7, times=1)
    limited = json_token_request(sandbox, app, grant_type="refresh_token", refresh_token="x")
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "7"
    after = json_token_request(sandbox, app, grant_type="refresh_token", refresh_token="x")
    assert after.status_code == 400  # fault used up: handled normally

    sandbox.faults(mode="error500")
    for path in ("/oauth/token", "/rest/oauth2/latest/token"):
        failed = requests.post(f"{sandbox.url}{path}", data={"grant_type": "refresh_token"})
        assert failed.status_code == 500
        assert failed.json() == {"error": "server_error"}
    sandbox.faults(mode="none")
    assert sandbox.counters()["token"]["refresh_token"] == 4


def test_slow_fault_lets_callers_overlap(sandbox: SandboxServer, apps: dict) -> None:
    app = apps["sandbox"]
    sandbox.faults(mode="slow", delay=1.0)
    results: list[int] = []

    def call() -> None:
        response = json_token_request(sandbox, app, grant_type="refresh_token", refresh_token="x")
        results.append(response.status_code)

    started = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    assert results == [400, 400, 400]
    assert 1.0 <= elapsed < 2.5


def test_counters_count_code_and_refresh_grants(sandbox: SandboxServer, apps: dict) -> None:
    sandbox.reset_counters()
    token = cloud_tokens(sandbox, apps, "bob")
    json_token_request(
        sandbox,
        apps["sandbox"],
        grant_type="refresh_token",
        refresh_token=token["refresh_token"],
    )
    counters = sandbox.counters()
    assert counters["token"] == {"authorization_code": 1, "refresh_token": 1}
    assert counters["revoke"] == 0
    sandbox.reset_counters()
    assert sandbox.counters()["token"] == {"authorization_code": 0, "refresh_token": 0}


def test_revoke_user_kills_oauth2_and_oauth1_tokens(sandbox: SandboxServer, apps: dict) -> None:
    token = cloud_tokens(sandbox, apps, "bob")
    jira = oauth1_dance(sandbox, apps, "sandbox-jira-hmac", "bob")
    live = sandbox.tokens("bob")
    assert live["oauth2_refresh_tokens"] >= 1
    assert live["oauth1_access_tokens"] == 1
    assert sandbox.counters()["oauth1_access_token"] >= 1

    sandbox.revoke_user("bob")
    assert sandbox.tokens("bob") == {
        "oauth2_access_tokens": 0,
        "oauth2_refresh_tokens": 0,
        "oauth1_access_tokens": 0,
    }
    assert (
        requests.get(f"{sandbox.url}/me", headers=bearer(token["access_token"])).status_code == 401
    )
    refresh = json_token_request(
        sandbox,
        apps["sandbox"],
        grant_type="refresh_token",
        refresh_token=token["refresh_token"],
    )
    assert refresh.json()["error"] == "invalid_grant"
    assert oauth_problem(jira.get(f"{sandbox.url}/rest/api/2/myself")) == "token_rejected"


def test_expired_access_tokens_are_refused_and_their_refresh_token_works(
    sandbox: SandboxServer, apps: dict
) -> None:
    token = cloud_tokens(sandbox, apps, "bob")
    assert sandbox.expire_access_tokens("bob")["oauth2_access_tokens"] == 0
    assert (
        requests.get(f"{sandbox.url}/me", headers=bearer(token["access_token"])).status_code == 401
    )
    refresh = json_token_request(
        sandbox, apps["sandbox"], grant_type="refresh_token", refresh_token=token["refresh_token"]
    )
    assert refresh.status_code == 200, refresh.text
    fresh = bearer(refresh.json()["access_token"])
    assert requests.get(f"{sandbox.url}/me", headers=fresh, timeout=TIMEOUT).status_code == 200


def test_cookie_names_do_not_clash_with_the_broker(sandbox: SandboxServer) -> None:
    browser = signed_in_browser(sandbox, "alice")
    assert "sessionid" not in browser.cookies
    assert "csrftoken" not in browser.cookies


def test_basic_auth_header_is_accepted_for_the_token_endpoint(
    sandbox: SandboxServer, apps: dict
) -> None:
    app = apps["sandbox"]
    token = cloud_tokens(sandbox, apps)
    credentials = base64.b64encode(f"{app['client_id']}:{app['client_secret']}".encode())
    response = requests.post(
        f"{sandbox.url}/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
        headers={"Authorization": f"Basic {credentials.decode()}"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200, response.text


def test_stale_timestamp_is_refused(sandbox: SandboxServer, apps: dict) -> None:
    app = apps["sandbox-jira-hmac"]
    auth = OAuth1Auth(
        app["consumer_key"],
        app["consumer_secret"],
        redirect_uri=OAUTH1_CALLBACK,
        signature_method=SIGNATURE_HMAC_SHA1,
    )
    url = f"{sandbox.url}/plugins/servlet/oauth/request-token"
    prepared = requests.Request("POST", url, auth=auth).prepare()
    header = prepared.headers["Authorization"]
    stale = str(int(time.time()) - 3600)
    fresh = header.split('oauth_timestamp="')[1].split('"')[0]
    prepared.headers["Authorization"] = header.replace(fresh, stale)
    with requests.Session() as http:
        assert oauth_problem(http.send(prepared)) == "timestamp_refused"


def test_switches_404_unless_enabled(sandbox: SandboxServer) -> None:
    # Same database, a fresh process without SANDBOX_TEST_SWITCHES.
    env = {k: v for k, v in os.environ.items() if k != "SANDBOX_TEST_SWITCHES"}
    env["SANDBOX_DATABASE_URL"] = f"sqlite:///{sandbox.providers_file.parent / 'sandbox.sqlite3'}"
    code = (
        "from django.test import Client;"
        "print(Client(HTTP_HOST='localhost').get('/_sandbox/counters').status_code)"
    )
    manage = Path(__file__).resolve().parent.parent / "sandbox" / "manage.py"
    result = subprocess.run(
        [sys.executable, str(manage), "shell", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "404"


def test_racing_refreshes_with_one_token_let_only_one_win(
    sandbox: SandboxServer, apps: dict
) -> None:
    token = cloud_tokens(sandbox, apps, "bob")
    sandbox.faults(mode="slow", delay=0.5)
    results: list[requests.Response] = []

    def refresh() -> None:
        results.append(
            json_token_request(
                sandbox,
                apps["sandbox"],
                grant_type="refresh_token",
                refresh_token=token["refresh_token"],
            )
        )

    threads = [threading.Thread(target=refresh) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.status_code for r in results) == [200, 400]
    loser = next(r for r in results if r.status_code == 400)
    assert loser.json()["error"] == "invalid_grant"
