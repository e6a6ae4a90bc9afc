"""Where a finished consent may send the browser: the broker itself or allow-listed origins.

A return URL arrives from a form or a service's connect link and is used after the
provider's callback, so an unchecked one would make the broker an open redirector
(RFC 9700 section 4.11). Anything that is not clearly safe is refused; callers then fall
back to My connections.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.utils.http import url_has_allowed_host_and_scheme

DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> str | None:
    """`scheme://host:port` with the default port filled in, or None if `url` has none."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return f"{scheme}://{parts.hostname.lower()}:{port or DEFAULT_PORTS[scheme]}"


def allowed_origins() -> set[str]:
    candidates = [settings.BROKER_PUBLIC_URL, *settings.BROKER_RETURN_URL_ALLOWLIST]
    return {origin for origin in map(origin_of, candidates) if origin}


def has_unsafe_characters(url: str) -> bool:
    # Browsers treat "\" like "/" ("/\evil.example" is protocol-relative) and drop tabs and
    # newlines inside URLs, so either can turn a harmless-looking path into another host.
    return "\\" in url or any(ord(char) < 0x21 or ord(char) == 0x7F for char in url)


def safe_return_url(url: str) -> str | None:
    """`url` if the browser may be sent there after consent, else None.

    Accepted: a path on the broker (`/x`, never `//x`), or an absolute http(s) URL without
    userinfo whose origin is BROKER_PUBLIC_URL's or listed in BROKER_RETURN_URL_ALLOWLIST.
    """
    if not url or has_unsafe_characters(url):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if url.startswith("/"):
        if url.startswith("//") or parts.scheme or parts.netloc:
            return None
        return url
    if parts.scheme.lower() not in DEFAULT_PORTS or "@" in parts.netloc:
        return None
    origin = origin_of(url)
    if origin is None or origin not in allowed_origins():
        return None
    # Django's own open-redirect check as a second opinion on the parsed host.
    if not url_has_allowed_host_and_scheme(url, allowed_hosts={parts.netloc}):
        return None
    return url
