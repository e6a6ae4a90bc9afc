"""The address a request came from, seen through the reverse proxies the operator trusts.

Audit rows, rate limits, the failed-authentication throttle and the metrics allow-list all
ask this one function. Behind proxies, REMOTE_ADDR is the nearest proxy's address; each
proxy appends the address it received the request from to X-Forwarded-For. With
BROKER_TRUSTED_PROXIES = n (the number of proxy hops in front of the broker), the client is
the n-th entry counted from the right, the one the outermost trusted proxy wrote: entries
further left were written by the caller and prove nothing. With 0 (the default) the header
is never read. Same rule as Werkzeug's ProxyFix (x_for=n).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest


@lru_cache(maxsize=4096)  # every request asks; the addresses repeat
def _address(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def client_ip(request: HttpRequest | None) -> str | None:
    """The client's IP address, or None when there is no request or no valid address."""
    if request is None:
        return None
    peer = _address(request.META.get("REMOTE_ADDR", ""))
    hops = int(settings.BROKER_TRUSTED_PROXIES)
    if hops <= 0:
        return peer
    forwarded = [v for v in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if v.strip()]
    if len(forwarded) < hops:
        # The request did not pass every configured proxy (e.g. it was sent to an inner
        # one): the peer address, as ProxyFix does.
        return peer
    return _address(forwarded[-hops]) or peer
