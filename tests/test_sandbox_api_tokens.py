"""The sandbox's Atlassian-like API tokens: a demo user makes one, and `/rest/api/3/myself`
accepts it with the user's email as Basic auth, and nothing else."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta

import pytest
import requests

from tests.sandbox_grants import TIMEOUT, signed_in_browser

pytestmark = pytest.mark.sandbox


def myself(sandbox, authorization: str | None) -> requests.Response:
    headers = {"Authorization": authorization} if authorization else {}
    return requests.get(f"{sandbox.url}/rest/api/3/myself", headers=headers, timeout=TIMEOUT)


def basic(email: str, token: str) -> str:
    return "Basic " + base64.b64encode(f"{email}:{token}".encode()).decode()


def test_a_token_with_its_email_is_accepted(sandbox):
    made = sandbox.api_token("alice")
    response = myself(sandbox, basic(made["email"], made["api_token"]))
    assert response.status_code == 200
    assert response.json()["accountId"] == "sandbox-alice"
    assert response.json()["emailAddress"] == made["email"] == "alice@sandbox.example"


@pytest.mark.parametrize(
    "authorization",
    [
        lambda made: None,
        lambda made: basic("bob@sandbox.example", made["api_token"]),
        lambda made: basic(made["email"], made["api_token"][:-1] + "0"),
        lambda made: basic(made["email"], "ATATTnot-a-token"),
        lambda made: f"Bearer {made['api_token']}",
        lambda made: "Basic !!!",
    ],
    ids=["none", "other-email", "tampered", "garbage", "bearer", "bad-base64"],
)
def test_anything_else_is_refused(sandbox, authorization):
    made = sandbox.api_token("alice")
    response = myself(sandbox, authorization(made))
    assert response.status_code == 401 and "Basic" in response.headers["WWW-Authenticate"]


def test_an_expired_token_is_refused(sandbox):
    made = sandbox.api_token("alice", days=0)
    assert myself(sandbox, basic(made["email"], made["api_token"])).status_code == 401


def test_a_demo_user_makes_a_token_on_the_api_tokens_page(sandbox):
    browser = signed_in_browser(sandbox, "alice")
    url = f"{sandbox.url}/manage-profile/security/api-tokens"
    page = browser.get(url, timeout=TIMEOUT)
    csrf = browser.cookies["sandbox_csrftoken"]
    too_late = f"{datetime.now(UTC).date() + timedelta(days=400):%Y-%m-%d}"
    refused = browser.post(url, data={"expires_on": too_late, "csrfmiddlewaretoken": csrf})
    assert page.status_code == 200 and "within the next year" in refused.text
    assert "data-api-token" not in refused.text

    in_a_month = f"{datetime.now(UTC).date() + timedelta(days=30):%Y-%m-%d}"
    made = browser.post(url, data={"expires_on": in_a_month, "csrfmiddlewaretoken": csrf})
    token = re.search(r"<code data-api-token>([^<]+)</code>", made.text)
    assert token
    assert myself(sandbox, basic("alice@sandbox.example", token.group(1))).status_code == 200
