"""An auth for `httpx.Client` and `httpx.AsyncClient` (httpx is an optional extra).

It sends a user's provider token as a Bearer token (RFC 6750); when the provider answers
401, it gets a token from a forced refresh and sends the request once more.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING

import anyio.to_thread
import httpx

if TYPE_CHECKING:
    from broker_client.client import BearerTokenSource


class HttpxBearerAuth(httpx.Auth):
    # httpx reads the body before the first send, so that the retry can send it again.
    requires_request_body = True

    def __init__(self, source: BearerTokenSource) -> None:
        self._source = source

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        request.read()
        token = self._source.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {self._source.renewed(token)}"
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        # The broker client blocks: its calls run in a worker thread, not on the event loop.
        token = await anyio.to_thread.run_sync(self._source.token)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            fresh = await anyio.to_thread.run_sync(self._source.renewed, token)
            request.headers["Authorization"] = f"Bearer {fresh}"
            yield request
