"""A `requests.Session` whose relative URLs go through the broker's proxy
(`/api/v1/proxy/<provider>/<path>`): the provider token never reaches the service.

The broker injects the user's credentials (a Bearer token, or a fresh OAuth 1.0a
signature), refreshes an expired token and retries once by itself; the provider's answers
come back as they are. The broker's own refusals (they carry `Broker-Error`) raise the
typed errors of `broker_client.errors` instead, so a caller never mistakes one for the
provider's answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import requests

from broker_client import __version__
from broker_client.errors import error_for

if TYPE_CHECKING:
    from broker_client.client import BrokerClient

PROXY_PATH = "/api/v1/proxy/"


def naming_headers(
    user: str | None, grant: str | None, subject_token: str | None
) -> dict[str, str]:
    """The one header that names the grant: `Broker-User`, `Broker-Grant`, or the user's
    own token from the company IdP (`Broker-Subject-Token`, for on-behalf-of rules)."""
    given = {
        "Broker-User": user,
        "Broker-Grant": grant,
        "Broker-Subject-Token": subject_token,
    }
    named = {name: value for name, value in given.items() if value is not None}
    if len(named) != 1:
        raise ValueError("give one of user=, grant= or subject_token=")
    return {name: str(value) for name, value in named.items()}


class ProxySession(requests.Session):
    """Relative URLs only (`"rest/api/3/myself"` or `"/ex/jira/<cloud id>/..."`): an
    absolute URL raises ValueError before anything is sent, so the broker token never
    goes anywhere but the broker."""

    def __init__(self, client: BrokerClient, provider: str, naming: dict[str, str]) -> None:
        super().__init__()
        self._client = client
        self._prefix = f"{client.base_url}{PROXY_PATH}{quote(provider, safe='')}/"
        self._naming = naming

    def request(  # type: ignore[override]
        self, method: str | bytes, url: str | bytes, **kwargs: Any
    ) -> requests.Response:
        """As `requests.Session.request`, with keyword arguments only (as get, post, ...
        pass them)."""
        target = url.decode() if isinstance(url, bytes) else url
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or target.startswith("//"):
            raise ValueError(f"a proxy session takes paths, not URLs: {target!r}")
        full_url = self._prefix + target.lstrip("/")
        kwargs.setdefault("timeout", self._client.timeout)
        headers = dict(kwargs.pop("headers", None) or {})
        token = self._client._current_broker_token()
        response = self._send_once(method, full_url, headers, token, **kwargs)
        if response.status_code == 401 and response.headers.get("Broker-Error"):
            # The broker token was retired (secret rotated, key removed): once more with a
            # new one. A 401 without Broker-Error is the provider's and is returned as is.
            response.close()
            self._client._drop_broker_token(token)
            token = self._client._current_broker_token()
            response = self._send_once(method, full_url, headers, token, **kwargs)
        if response.headers.get("Broker-Error"):
            try:
                payload = response.json()
            except ValueError:
                payload = None
            raise error_for(response.status_code, payload, response.headers.get("Retry-After"))
        return response

    def _send_once(
        self,
        method: str | bytes,
        url: str,
        headers: dict[str, str],
        token: str,
        **kwargs: Any,
    ) -> requests.Response:
        sent = {
            "User-Agent": f"oauth-broker-client/{__version__}",
            **headers,
            **self._naming,
            "Authorization": f"Bearer {token}",
        }
        return super().request(method, url, headers=sent, **kwargs)
