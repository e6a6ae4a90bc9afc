"""Drives the consent flow over real HTTP like a browser: the broker on 127.0.0.1, the
sandbox provider on localhost, one requests.Session (cookie jar) per person."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import requests

TIMEOUT = 10


class HiddenInputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.inputs: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {key: value or "" for key, value in attrs}
        if tag == "input" and values.get("type") == "hidden" and "name" in values:
            self.inputs[values["name"]] = values.get("value", "")


def hidden_inputs(html: str) -> dict[str, str]:
    parser = HiddenInputs()
    parser.feed(html)
    return parser.inputs


def query_of(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def press_connect(session: requests.Session, broker_url: str, slug: str, **fields: str) -> str:
    """POSTs the Connect form; returns where the broker sends the browser (the provider)."""
    session.get(f"{broker_url}/connections/", timeout=TIMEOUT)
    response = session.post(
        f"{broker_url}/connect/{slug}",
        data={"csrfmiddlewaretoken": session.cookies["csrftoken"], **fields},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def sign_in_to_sandbox(session: requests.Session, sandbox_url: str, username: str) -> None:
    session.get(f"{sandbox_url}/accounts/login/", timeout=TIMEOUT)
    response = session.post(
        f"{sandbox_url}/accounts/login/",
        data={
            "username": username,
            "password": f"{username}-sandbox",
            "csrfmiddlewaretoken": session.cookies["sandbox_csrftoken"],
        },
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert response.status_code == 302, response.text


def answer_consent(session: requests.Session, authorize_url: str, button: str = "allow") -> str:
    """Presses Allow or Deny on the sandbox's consent page; returns the callback URL."""
    page = session.get(authorize_url, timeout=TIMEOUT)
    assert page.status_code == 200 and 'name="allow"' in page.text, page.text
    data = {**hidden_inputs(page.text), button: button.title()}
    response = session.post(page.url, data=data, allow_redirects=False, timeout=TIMEOUT)
    assert response.status_code == 302, response.text
    return response.headers["Location"]


def callback_url(
    session: requests.Session, broker_url: str, slug: str, button: str = "allow", **fields: str
) -> str:
    """Connect, then consent at the sandbox; returns the (not yet visited) callback URL."""
    location = answer_consent(session, press_connect(session, broker_url, slug, **fields), button)
    assert location.startswith(f"{broker_url}/oauth/callback/{slug}?"), location
    return location


def visit(session: requests.Session, url: str) -> requests.Response:
    return session.get(url, allow_redirects=False, timeout=TIMEOUT)


def sandbox_consent(authorize_url: str, username: str, button: str) -> str:
    """In a fresh provider-side session: sign in to the sandbox as `username`, press Allow or
    Deny, and return where the sandbox redirects (the broker's callback URL)."""
    parts = urlsplit(authorize_url)
    session = requests.Session()
    sign_in_to_sandbox(session, f"{parts.scheme}://{parts.netloc}", username)
    return answer_consent(session, authorize_url, button)
