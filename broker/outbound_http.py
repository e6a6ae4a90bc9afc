"""The one HTTP client for requests to URLs that operators or services typed in (webhooks).

Such a URL must not become a way into the broker's own network (SSRF): every address the
host name resolves to must be public, unless it falls in BROKER_WEBHOOK_ALLOWED_NETWORKS.
The check runs where the socket is opened, on the very address connected to, so a DNS
answer that changes between a check and the connection (rebinding) cannot slip through.
Timeouts are short, redirects are not followed, and proxies from the environment are ignored.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

CONNECT_TIMEOUT_SECONDS = 3.05
READ_TIMEOUT_SECONDS = 10

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefused(Exception):
    """The URL's host is not a public address (or not allow-listed); nothing was sent."""


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in settings.BROKER_WEBHOOK_ALLOWED_NETWORKS]


def check_address(address: str) -> IPAddress:
    """Refuses private, loopback, link-local, reserved and multicast addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    if any(ip in network for network in allowed_networks()):
        return ip
    if not ip.is_global or ip.is_multicast:
        raise DestinationRefused(f"{ip} is not a public address")
    return ip


def resolve_checked(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, all checked; refuses if any one is not allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DestinationRefused(f"cannot resolve {host}: {exc.strerror}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise DestinationRefused(f"{host} has no address")
    for address in addresses:
        check_address(address)
    return addresses


class _GuardedConnectionMixin:
    """Connects only to an address that passed `resolve_checked`."""

    _dns_host: str
    port: int

    def _new_conn(self) -> socket.socket:
        addresses = resolve_checked(self._dns_host, self.port)
        self._dns_host = addresses[0]  # connect to the checked address, not a new lookup
        return super()._new_conn()  # type: ignore[misc]


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPConnectionPool,
            "https": _GuardedHTTPSConnectionPool,
        }


def check_url(url: str) -> None:
    """Refuses URLs that are not http(s), carry credentials, or point at a refused address."""
    parts = urlsplit(url)
    schemes = {"https", "http"} if settings.BROKER_ALLOW_HTTP or settings.DEBUG else {"https"}
    if parts.scheme not in schemes:
        raise DestinationRefused(f"scheme {parts.scheme!r} is not allowed")
    if parts.username or parts.password:
        raise DestinationRefused("URLs with credentials are not allowed")
    if not parts.hostname:
        raise DestinationRefused("the URL has no host")
    resolve_checked(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))


def post(url: str, body: bytes, headers: Mapping[str, str]) -> requests.Response:
    """POSTs `body`; raises DestinationRefused before anything is sent to a refused host, and
    requests.RequestException for network errors. The response body is not read."""
    check_url(url)
    with requests.Session() as session:
        session.trust_env = False  # no proxies or .netrc credentials from the environment
        adapter = _GuardedAdapter(max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        response = session.post(
            url,
            data=body,
            headers=dict(headers),
            timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
            allow_redirects=False,
            stream=True,
        )
        response.close()
        return response
