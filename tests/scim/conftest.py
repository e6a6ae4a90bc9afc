"""Fixtures for SCIM: an IdP connection's token (from `createscimtoken --json`, as an
operator gets it) and a client that sends what IdPs send."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

SCIM = "/scim/v2"
SCIM_JSON = "application/scim+json"


def create_token(name: str) -> str:
    out = io.StringIO()
    call_command("createscimtoken", name, "--json", stdout=out)
    answer = json.loads(out.getvalue())
    assert answer["name"] == name
    token: str = answer["token"]
    return token


class ScimClient:
    """Sends SCIM requests with a bearer token, as an IdP does."""

    def __init__(self, token: str) -> None:
        self.client = Client()
        self.token = token

    def _send(self, method: str, path: str, body: Any = None, **extra: Any) -> Any:
        send = getattr(self.client, method)
        kwargs: dict[str, Any] = {"HTTP_AUTHORIZATION": f"Bearer {self.token}", **extra}
        if body is not None:
            data = body if isinstance(body, str | bytes) else json.dumps(body)
            return send(f"{SCIM}{path}", data, content_type=SCIM_JSON, **kwargs)
        return send(f"{SCIM}{path}", **kwargs)

    def get(self, path: str, **extra: Any) -> Any:
        return self._send("get", path, **extra)

    def post(self, path: str, body: Any, **extra: Any) -> Any:
        return self._send("post", path, body, **extra)

    def put(self, path: str, body: Any, **extra: Any) -> Any:
        return self._send("put", path, body, **extra)

    def patch(self, path: str, body: Any, **extra: Any) -> Any:
        return self._send("patch", path, body, **extra)

    def delete(self, path: str, **extra: Any) -> Any:
        return self._send("delete", path, **extra)


@pytest.fixture
def okta(db) -> ScimClient:
    return ScimClient(create_token("okta"))


@pytest.fixture
def entra(db) -> ScimClient:
    return ScimClient(create_token("entra"))


def patch_op(*operations: dict[str, Any]) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": list(operations),
    }
