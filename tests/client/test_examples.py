"""docs/client.md's examples, run as they are written against the live broker, with the
sandbox standing in for Atlassian and Jira (their URLs and app slugs swapped in)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from broker_client import BrokerClient, InvalidRequest

from accounts.models import ExternalIdentity
from tests.client.conftest import add_rule, create_service, private_pem, public_pem, sandbox_app
from tests.sandbox_grants import PROJECT_ROOT, connect_grant
from tests.subject_idp import AUDIENCE

pytestmark = pytest.mark.sandbox

GUIDE = PROJECT_ROOT / "docs" / "client.md"
CLOUD_ID = "6f1c2a0e-5b7d-4c1e-9a4f-0d3e8b7a1c01"  # the sandbox's first site


# How each test below finds its example: a text only that example holds.
MARKERS = (
    'BrokerClient("https://broker.example"',
    'BrokerClient("http://localhost:8000"',
    "for grant in broker.grants(",
    "def profile_page(",
    "requests_oauth1_auth",
    "broker.proxy_session(",
)


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)


def example(marker: str) -> str:
    """The guide's one Python block that contains `marker`."""
    [found] = [block for block in blocks() if marker in block]
    return found


def test_every_example_in_the_guide_is_run_by_a_test():
    """A new example in docs/client.md needs its test (and a marker here)."""
    for block in blocks():
        assert [marker for marker in MARKERS if marker in block], block


@pytest.fixture
def run(sandbox, monkeypatch, broker_url) -> Iterator[Callable[..., dict[str, Any]]]:
    """Runs an example with its environment; returns its global names."""
    swaps = {
        "https://api.atlassian.com": sandbox.url,
        "https://jira.acme.example": sandbox_app(sandbox, "sandbox-jira")["base_url"],
        '"atlassian"': '"sandbox"',
        '"jira-acme"': '"sandbox-jira"',
    }
    clients: list[BrokerClient] = []

    def run_example(code: str, env: dict[str, str], **names: Any) -> dict[str, Any]:
        for old, new in swaps.items():
            code = code.replace(old, new)
        for name, value in {"BROKER_URL": broker_url, **env}.items():
            monkeypatch.setenv(name, value)
        namespace: dict[str, Any] = {"__name__": "example", **names}
        exec(compile(code, str(GUIDE), "exec"), namespace)
        clients.append(namespace["broker"])
        return namespace

    yield run_example
    for client in clients:
        client.close()


def secret_env(service: dict[str, Any]) -> dict[str, str]:
    return {
        "BROKER_CLIENT_ID": service["client_id"],
        "BROKER_CLIENT_SECRET": service["client_secret"],
    }


def test_the_three_lines(run, service, grant, broker_url):
    code = (
        example('BrokerClient("https://broker.example"')
        .replace("https://broker.example", broker_url)
        .replace("reporting-1a2b", service["client_id"])
        .replace("bks_...", service["client_secret"])
    )
    names = run(code, {}, BrokerClient=BrokerClient, requests=requests)
    assert names["me"].status_code == 200 and names["me"].json()["name"] == "Alice Anders"


def test_the_three_lines_against_make_dev(run, service, grant, broker_url, sandbox):
    code = (
        example('BrokerClient("http://localhost:8000"')
        .replace("http://localhost:8000", broker_url)
        .replace("http://localhost:8001", sandbox.url)
        .replace("reporting-1a2b", service["client_id"])
        .replace("bks_...", service["client_secret"])
    )
    names = run(code, {}, BrokerClient=BrokerClient, requests=requests)
    assert names["me"].status_code == 200 and names["me"].json()["name"] == "Alice Anders"


def test_the_proxy_session(run, broker, grant, sandbox):
    sandbox.reset_counters()
    names = run(example("broker.proxy_session("), {}, broker=broker, cloud_id=CLOUD_ID)
    assert names["myself"].status_code == 200 and names["issue"].status_code == 200
    assert names["issue"].json()["jql"] == "project = OPS"
    # Both went to the sandbox through the broker, the token never to the example.
    assert "access_token" not in names
    requests_seen = sandbox.counters()["requests"]
    assert any(path.endswith("/rest/api/3/myself") for path in requests_seen)


def test_the_cron_job(run, service, grant, sandbox, django_user_model, capsys):
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "bob-broker")
    connect_grant(sandbox, bob, username="bob")
    sandbox.revoke_user("bob")  # bob removed the app at the provider: his grant is dead

    run(example("for grant in broker.grants("), secret_env(service))

    printed = capsys.readouterr().out.splitlines()
    assert printed == ["alice: Alice Anders", "bob: must connect again"]


def test_the_web_app(
    run, grant, tmp_path, settings, django_user_model, broker_url, rsa_key, broker_login, idp
):
    settings.BROKER_RETURN_URL_ALLOWLIST = ["https://app.example"]
    (tmp_path / "web-public.pem").write_text(public_pem(rsa_key))
    web = create_service(
        "--public-key", str(tmp_path / "web-public.pem"), "--subject-audience", AUDIENCE
    )
    add_rule(web["client_id"], "sandbox", "--on-behalf-of", "--connect-links")
    (tmp_path / "web.pem").write_text(private_pem(rsa_key))
    bob = django_user_model.objects.create_user("bob", "bob@example.com", "bob-broker")
    for user in (grant.user, bob):  # both signed in to the app with the company IdP
        ExternalIdentity.objects.create(user=user, issuer=idp.issuer, subject=f"{user}-sub")

    key_file = str(tmp_path / "web.pem")
    env = {"BROKER_CLIENT_ID": web["client_id"], "BROKER_PRIVATE_KEY_FILE": key_file}
    names = run(example("def profile_page("), env)

    assert names["profile_page"]("alice", idp.token("alice-sub")) == {"name": "Alice Anders"}
    connect = names["profile_page"]("bob", idp.token("bob-sub"))  # not connected yet
    assert connect["connect_url"].startswith(f"{broker_url}/")
    page = broker_login("bob", "bob-broker").get(connect["connect_url"], timeout=10)
    assert page.status_code == 200 and "data-connect-link" in page.text
    # A token of someone else's audience gets nothing, not even a connect link.
    with pytest.raises(InvalidRequest):
        names["profile_page"]("alice", idp.token("alice-sub", aud="another-app"))


def test_the_data_center_script(run, service, jira_grant, capsys):
    run(example("requests_oauth1_auth"), secret_env(service))
    assert capsys.readouterr().out.strip() == "Alice Anders"
