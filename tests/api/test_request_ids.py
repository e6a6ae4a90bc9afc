"""Each token fetch's audit event names its own request (the X-Request-ID on its log line
and upstream calls)."""

from __future__ import annotations

import pytest

from tests.api.conftest import audit_events


@pytest.mark.django_db
def test_each_repeated_token_fetch_is_audited_with_its_own_request_id(api, grant, rule, bearer):
    headers = bearer()
    for n in range(4):
        response = api.post(
            "/api/v1/access-token",
            {"grant": str(grant.pk)},
            content_type="application/json",
            HTTP_X_REQUEST_ID=f"fetch-{n}",
            **headers,
        )
        assert response.status_code == 200 and response["X-Request-ID"] == f"fetch-{n}"

    events = audit_events(grant_id=grant.pk)
    assert [e.detail.get("request_id") for e in events] == [f"fetch-{n}" for n in range(4)]
