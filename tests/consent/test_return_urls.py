"""Which return URLs a finished consent may redirect to (no open redirects)."""

import pytest

from broker.consent.return_urls import safe_return_url


@pytest.fixture(autouse=True)
def public_url(settings):
    settings.BROKER_PUBLIC_URL = "https://broker.example"
    settings.BROKER_RETURN_URL_ALLOWLIST = ["https://app.example", "http://localhost:3000"]


@pytest.mark.parametrize(
    "url",
    [
        "/connections/",
        "/x?next=1#frag",
        "https://broker.example/connections/",
        "https://BROKER.example:443/x",
        "https://app.example/done?ok=1",
        "http://localhost:3000/callback",
    ],
)
def test_it_accepts_broker_paths_and_allow_listed_origins(url):
    assert safe_return_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "//evil.example",
        "//evil.example/connections/",
        "/\\evil.example",
        "\\\\evil.example",
        "/\tevil",
        "/x\ny",
        " /connections/",
        "https://evil.example/",
        "https://app.example.evil.example/",
        "https://evil.example/?https://app.example",
        "http://app.example/",  # scheme is part of the origin
        "https://app.example:444/",  # so is the port
        "http://localhost:3001/",
        "https://user@app.example/",
        "https://app.example@evil.example/",
        "javascript:alert(1)",
        "JavaScript://app.example/%0aalert(1)",
        "data:text/html,<script>alert(1)</script>",
        "ftp://app.example/",
        "connections/",
        "https:app.example",
        "https:///app.example",
        "https://app.example:99999/",
        "/x\x7f",
    ],
)
def test_it_rejects_everything_else(url):
    assert safe_return_url(url) is None
