"""GET /api/v1/grants past 1,000 grants: pages in creation order, each naming the next, so
a service that follows `next` sees every grant exactly once."""

from __future__ import annotations

import base64
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from django.utils import timezone

from broker.models import Grant
from tests.factories import consented_grant

pytestmark = pytest.mark.django_db

TOTAL = 2345


@pytest.fixture
def many_grants(owner, outsider, atlassian) -> list[str]:
    grants = [
        Grant(
            user=owner if n % 3 else outsider,
            provider_app=atlassian,
            external_account_id=f"acct-{n}",
            status=Grant.Status.REVOKED if n % 10 == 0 else Grant.Status.ACTIVE,
        )
        for n in range(TOTAL)
    ]
    Grant.objects.bulk_create(grants, batch_size=500)
    # Many grants created in the same instant: the id breaks the tie.
    same_moment = timezone.now() - timedelta(days=1)
    Grant.objects.filter(pk__in=[g.pk for g in grants[500:1700]]).update(created_at=same_moment)
    return [str(g.pk) for g in grants]


def every_page(api, headers, params: dict[str, str]) -> list[dict]:
    pages = []
    response = api.get("/api/v1/grants", params, **headers)
    while True:
        assert response.status_code == 200, response.content
        pages.append(response.json())
        if pages[-1]["next"] is None:
            return pages
        next_url = urlsplit(pages[-1]["next"])
        assert next_url.scheme == "http" and next_url.netloc == "testserver"
        query = {k: v[0] for k, v in parse_qs(next_url.query).items()}
        response = api.get(next_url.path, query, **headers)


def test_following_next_lists_every_grant_once_past_a_thousand(api, many_grants, rule, bearer):
    pages = every_page(api, bearer(), {})
    assert [len(page["grants"]) for page in pages] == [1000, 1000, TOTAL - 2000]
    listed = [grant["id"] for page in pages for grant in page["grants"]]
    assert len(listed) == len(set(listed)) == TOTAL
    assert set(listed) == set(many_grants)


def test_pages_keep_the_filters_and_the_limit(api, many_grants, rule, bearer):
    pages = every_page(api, bearer(), {"user": "alice", "status": "active", "limit": "300"})
    expected = Grant.objects.filter(user__username="alice", status="active").count()
    assert all(len(page["grants"]) == 300 for page in pages[:-1])
    listed = [grant for page in pages for grant in page["grants"]]
    assert len(listed) == len({g["id"] for g in listed}) == expected
    assert {(g["user"], g["status"]) for g in listed} == {("alice", "active")}
    assert all("user=alice" in page["next"] and "limit=300" in page["next"] for page in pages[:-1])


def test_a_grant_created_between_pages_is_neither_skipped_nor_repeated(
    api, owner, other_app, atlassian, rule, bearer
):
    headers = bearer()
    first = [consented_grant(owner, atlassian, external_account_id=f"a{n}") for n in range(3)]
    page = api.get("/api/v1/grants", {"limit": "2"}, **headers).json()
    assert [g["id"] for g in page["grants"]] == [str(g.pk) for g in first[:2]]
    Grant.objects.filter(pk=first[0].pk).update(status="revoked")  # changes nothing here
    late = consented_grant(owner, atlassian, external_account_id="late")
    query = {k: v[0] for k, v in parse_qs(urlsplit(page["next"]).query).items()}
    rest = api.get("/api/v1/grants", query, **headers).json()
    assert [g["id"] for g in rest["grants"]] == [str(first[2].pk), str(late.pk)]
    assert rest["next"] is None


def test_a_short_list_says_there_is_no_next_page(api, grant, rule, bearer):
    body = api.get("/api/v1/grants", **bearer()).json()
    assert [g["id"] for g in body["grants"]] == [str(grant.pk)] and body["next"] is None


def encoded(position: bytes) -> str:
    return base64.urlsafe_b64encode(position).decode()


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "limit=%EF%BC%91%EF%BC%90",  # fullwidth digits
        "cursor=not-a-cursor",
        "cursor=" + encoded(b"{}"),
        "cursor=" + encoded(b"[1, 2]"),
        "cursor=" + encoded(b'["2026-01-01T00:00:00+00:00", "x"]'),
        # No time zone: not one the API issued.
        "cursor=" + encoded(b'["2026-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"]'),
        "cursor=%ED%A0%80",  # a lone surrogate, UTF-8 encoded
        "cursor=%00",
    ],
)
def test_bad_paging_parameters_are_a_json_400(api, grant, rule, bearer, query):
    response = api.get(f"/api/v1/grants?{query}", **bearer())
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "invalid_request"
