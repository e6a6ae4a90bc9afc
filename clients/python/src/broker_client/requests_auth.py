"""Auth objects for `requests` (`session.auth = ...`).

`RequestsBearerAuth` sends a user's provider token as a Bearer token (RFC 6750); when the
provider answers 401 (the token was revoked or expired early), it gets a token from a
forced refresh and sends the request once more. `RequestsOAuth1Auth` has the broker sign
each request for an OAuth 1.0a grant (Jira / Confluence Data Center).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests
from requests.auth import AuthBase

if TYPE_CHECKING:
    from broker_client.client import BearerTokenSource, BrokerClient, Subject

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def _rewinder(body: object) -> Callable[[], object] | None:
    """How to send `body` again: nothing to do for bytes, seek back for a file; None for a
    stream that can be read only once."""
    if body is None or isinstance(body, str | bytes):
        return lambda: None
    seek, tell = getattr(body, "seek", None), getattr(body, "tell", None)
    if seek is None or tell is None:
        return None
    position = tell()
    return lambda: seek(position)


class RequestsBearerAuth(AuthBase):
    def __init__(self, source: BearerTokenSource) -> None:
        self._source = source

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self._source.token()
        request.headers["Authorization"] = f"Bearer {token}"
        rewind = _rewinder(request.body)
        if rewind is None:
            return request  # a streamed body cannot be sent twice: a 401 is the caller's

        def retry_once_on_401(response: requests.Response, **send: Any) -> requests.Response:
            if response.status_code != 401:
                return response
            response.close()  # before asking the broker, which may raise
            fresh = self._source.renewed(token)
            rewind()
            retry = response.request.copy()
            retry.headers["Authorization"] = f"Bearer {fresh}"
            # Sent by the transport itself, which runs no hooks: this is the only retry.
            resent: requests.Response = response.connection.send(retry, **send)
            resent.history.append(response)
            resent.request = retry
            return resent

        request.register_hook("response", retry_once_on_401)
        return request


class RequestsOAuth1Auth(AuthBase):
    def __init__(self, client: BrokerClient, target: Subject) -> None:
        self._client = client
        self._target = target

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        content_type = request.headers.get("Content-Type")
        body = None
        if content_type and FORM_CONTENT_TYPE in content_type and request.body:
            # RFC 5849 3.4.1.3.1: a form body's parameters are part of the signature.
            if not isinstance(request.body, str | bytes):
                raise ValueError("a form body must be str or bytes to be signed")
            body = request.body.decode() if isinstance(request.body, bytes) else request.body
        request.headers["Authorization"] = self._client.sign(
            request.method or "GET",
            request.url or "",
            body,
            content_type=content_type,
            **self._target,
        )
        return request
