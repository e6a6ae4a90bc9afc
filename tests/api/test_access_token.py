"""POST /api/v1/access-token, GET /api/v1/grants, validation and JSON errors."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from broker.api.serving import capped_min_ttl
from broker.models import Grant
from tests.api.conftest import audit_events, token_issues
from tests.factories import consented_grant
from tests.other_refresher import REFRESHED_ACCESS_TOKEN, refreshing_elsewhere

pytestmark = pytest.mark.django_db


def post(api, body, headers, path="/api/v1/access-token"):
    return api.post(path, body, content_type="application/json", **headers)


def test_it_returns_the_stored_token_when_it_lasts_min_ttl(api, grant, rule, bearer):
    response = post(api, {"grant": str(grant.pk)}, bearer())
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    assert set(body) == {
        "access_token",
        "token_type",
        "expires_at",
        "expires_in",
        "scopes",
        "grant",
        "account",
        "resources",
    }
    assert body["access_token"] == grant.unseal("access_token")
    assert body["token_type"] == "Bearer"
    assert body["expires_at"].endswith("Z")
    assert 3500 < body["expires_in"] <= 3600
    # The rule allows read:me and read:jira-work; the grant has more.
    assert body["scopes"] == ["read:jira-work", "read:me"]
    assert body["grant"] == str(grant.pk)
    assert body["account"] == {
        "id": "acct-alice-atlassian",
        "name": "Alice",
        "email": "alice@example.com",
    }
    assert body["resources"][0]["id"] == "cloud-1"
    [event] = audit_events(action="token.issued")
    assert event.grant_id == grant.pk and event.service == rule.service.client_id
    assert event.subject_user == "alice" and event.scopes == ["read:jira-work", "read:me"]
    assert event.client_ip == "127.0.0.1"
    assert body["access_token"] not in str(event.detail)


def test_each_served_token_is_counted_in_metrics_and_refusals_are_not(
    api, owner, atlassian, grant, rule, bearer
):
    headers = bearer()
    before = token_issues(rule.service, "issued")
    assert post(api, {"grant": str(grant.pk)}, headers).status_code == 200
    assert post(api, {"grant": str(grant.pk)}, headers).status_code == 200
    denied = post(api, {"grant": str(grant.pk), "scopes": ["write:jira-work"]}, headers)
    assert denied.status_code == 403
    assert token_issues(rule.service, "issued") == before + 2


def test_it_finds_the_grant_by_user_and_provider(api, grant, rule, bearer):
    response = post(
        api, {"user": "alice", "provider": "atlassian", "scopes": ["read:me"]}, bearer()
    )
    assert response.status_code == 200
    assert response.json()["grant"] == str(grant.pk)
    # Asking for fewer scopes does not narrow the token: the answer says what it carries.
    assert response.json()["scopes"] == ["read:jira-work", "read:me"]


def test_a_token_carrying_a_scope_the_rules_do_not_allow_is_refused(
    api, owner, atlassian, rule, bearer
):
    wide = consented_grant(
        owner, atlassian, scopes=["read:me", "read:jira-work", "write:jira-work"]
    )
    before = Grant.objects.filter(pk=wide.pk).values().get()
    for body in ({"grant": str(wide.pk)}, {"grant": str(wide.pk), "scopes": ["read:me"]}):
        response = post(api, body, bearer())
        assert response.status_code == 403, response.content
        assert response.json()["error"] == "insufficient_scope"
        description = response.json()["error_description"]
        assert "write:jira-work" in description and "read:me" not in description
        assert "access_token" not in response.json()
    assert Grant.objects.filter(pk=wide.pk).values().get() == before  # nothing refreshed
    assert not audit_events(action="token.issued")
    denied = audit_events(action="token.denied")
    assert denied[0].scopes == ["read:jira-work", "read:me", "write:jira-work"]


@pytest.mark.django_db(transaction=True)
def test_it_records_last_use_cheaply(api, grant, rule, bearer, django_assert_max_num_queries):
    headers = bearer()
    post(api, {"grant": str(grant.pk)}, headers)
    grant.refresh_from_db()
    assert grant.last_used_by_id == rule.service_id and grant.last_used_at is not None
    first_use = grant.last_used_at
    # Later calls within the minute write only their audit event: the service, the grant
    # and the rules are read, each in one query.
    with django_assert_max_num_queries(4) as run:
        assert post(api, {"grant": str(grant.pk)}, headers).status_code == 200
    statements = [q["sql"].lstrip().upper().split()[0] for q in run.captured_queries]
    assert sorted(statements) == ["INSERT", "SELECT", "SELECT", "SELECT"]
    assert "audit" in next(
        q["sql"] for q in run.captured_queries if q["sql"].lstrip().upper().startswith("INSERT")
    )
    grant.refresh_from_db()
    assert grant.last_used_at == first_use


@pytest.mark.django_db(transaction=True)
def test_a_spent_refresh_mark_costs_no_query(
    api, grant, rule, bearer, django_assert_max_num_queries
):
    """A refresh's in-flight mark stays a while after it committed: the hot path compares it
    with the token_version read with the token (no query of its own, no deferred load)."""
    from broker.refresh import doubt_marks

    headers = bearer()
    post(api, {"grant": str(grant.pk)}, headers)  # the first use writes last_used
    assert doubt_marks.mark_in_flight(grant.pk, grant.token_version - 1)
    with django_assert_max_num_queries(4):  # three reads and the audit event
        response = post(api, {"grant": str(grant.pk)}, headers)
    assert response.status_code == 200
    assert response.json()["access_token"] == grant.unseal("access_token")


def test_a_scope_the_grant_lacks_is_a_403_naming_it(api, owner, atlassian, rule, bearer):
    narrow = consented_grant(owner, atlassian, scopes=["read:me"])
    response = post(
        api, {"grant": str(narrow.pk), "scopes": ["read:me", "read:jira-work"]}, bearer()
    )
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"
    assert "read:jira-work" in response.json()["error_description"]
    assert "access_token" not in response.json()
    [event] = audit_events(action="token.denied")
    assert event.grant_id == narrow.pk and event.scopes == ["read:me", "read:jira-work"]


def test_a_scope_beyond_the_rule_is_a_403_naming_it(api, grant, rule, bearer):
    response = post(api, {"grant": str(grant.pk), "scopes": ["write:jira-work"]}, bearer())
    assert response.status_code == 403
    assert "write:jira-work" in response.json()["error_description"]


@pytest.mark.parametrize("status", ["reconnect_required", "revoked"])
def test_a_dead_grant_is_409_reconnect_required(api, grant, rule, bearer, status):
    Grant.objects.filter(pk=grant.pk).update(status=status)
    response = post(api, {"grant": str(grant.pk)}, bearer())
    assert response.status_code == 409
    assert response.json()["error"] == "reconnect_required"
    assert "access_token" not in response.json()
    [event] = audit_events(action="token.denied")
    assert event.detail["status"] == 409


def test_an_oauth1_grant_is_sent_to_sign(api, owner, jira_dc, service_with_secret, bearer):
    from broker.models import AccessRule

    AccessRule.objects.create(service=service_with_secret[0], provider_app=jira_dc, can_sign=True)
    oauth1 = consented_grant(owner, jira_dc, access_expires_at=None)
    response = post(api, {"grant": str(oauth1.pk)}, bearer())
    assert response.status_code == 400 and "/api/v1/sign" in response.json()["error_description"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"grant": "x", "colour": "red"}, "colour"),
        ({"grant": 5}, "grant"),
        ({"grant": "not-a-uuid"}, "grant"),
        ({"user": "alice", "provider": "atlassian", "min_ttl": "60"}, "min_ttl"),
        ({"user": "alice", "provider": "atlassian", "min_ttl": True}, "min_ttl"),
        ({"user": "alice", "provider": "atlassian", "min_ttl": -1}, "min_ttl"),
        ({"user": "alice", "provider": "atlassian", "force_refresh": "yes"}, "force_refresh"),
        ({"user": "alice", "provider": "atlassian", "scopes": "read:me"}, "scopes"),
        ({"user": "alice", "provider": "atlassian", "scopes": [1]}, "scopes"),
        ({"user": "alice"}, "grant"),
    ],
)
def test_unknown_fields_and_wrong_types_are_400_naming_the_field(api, rule, bearer, body, field):
    response = post(api, body, bearer())
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert repr(field) in response.json()["error_description"]


def test_bodies_that_are_not_json_objects_are_refused(api, rule, bearer):
    headers = bearer()
    assert post(api, [], headers).status_code == 400
    bad = api.post("/api/v1/access-token", "{", content_type="application/json", **headers)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
    form = api.post("/api/v1/access-token", "grant=x", content_type="text/plain", **headers)
    assert form.status_code == 415


def test_errors_under_api_are_json(api, rule, bearer):
    missing = api.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert api.get("/api/elsewhere").json()["error"] == "not_found"
    wrong_method = api.get("/api/v1/access-token", **bearer())
    assert wrong_method.status_code == 405 and wrong_method["Allow"] == "POST"
    assert set(wrong_method.json()) == {"error", "error_description"}
    unauthenticated = api.post("/api/v1/access-token", {}, content_type="application/json")
    assert unauthenticated.status_code == 401 and unauthenticated["WWW-Authenticate"].startswith(
        "Bearer"
    )


def test_server_errors_are_json_and_say_nothing_inside(api, grant, rule, bearer, monkeypatch):
    from broker.api import serving

    def explode(*args, **kwargs):
        raise RuntimeError("database password is hunter2")

    monkeypatch.setattr(serving.grant_lookup, "note_use", explode)
    response = post(api, {"grant": str(grant.pk)}, bearer())
    assert response.status_code == 500
    assert response.json()["error"] == "server_error" and "hunter2" not in response.content.decode()


def test_min_ttl_is_capped_to_the_token_lifetime_minus_a_margin(owner, atlassian):
    now = timezone.now()
    hour = consented_grant(
        owner, atlassian, consented_at=now, access_expires_at=now + timedelta(hours=1)
    )
    short = consented_grant(
        owner,
        atlassian,
        external_account_id="other",
        last_refreshed_at=now,
        access_expires_at=now + timedelta(seconds=2),
    )
    assert capped_min_ttl(60, hour) == 60
    assert capped_min_ttl(10_000, hour) == 3570
    assert capped_min_ttl(60, short) == 1


def test_grants_list_filters_and_never_shows_tokens(api, owner, outsider, atlassian, rule, bearer):
    mine = consented_grant(owner, atlassian)
    theirs = consented_grant(outsider, atlassian)
    Grant.objects.filter(pk=theirs.pk).update(status="reconnect_required")
    headers = bearer()
    everything = api.get("/api/v1/grants", **headers)
    assert everything.status_code == 200
    assert {g["id"] for g in everything.json()["grants"]} == {str(mine.pk), str(theirs.pk)}
    assert mine.unseal("access_token") not in everything.content.decode()
    assert mine.unseal("refresh_token") not in everything.content.decode()
    by_status = api.get("/api/v1/grants", {"status": "reconnect_required"}, **headers).json()
    assert [g["id"] for g in by_status["grants"]] == [str(theirs.pk)]
    by_user = api.get("/api/v1/grants", {"user": "alice", "provider": "atlassian"}, **headers)
    assert [g["id"] for g in by_user.json()["grants"]] == [str(mine.pk)]
    assert api.get("/api/v1/grants", {"status": "weird"}, **headers).status_code == 400
    assert api.get("/api/v1/grants", {"colour": "red"}, **headers).status_code == 400


def test_a_narrowed_broker_token_reaches_only_its_api_scopes(api, grant, rule, bearer):
    headers = bearer(scope="grants:read")
    assert api.get("/api/v1/grants", **headers).status_code == 200
    refused = post(api, {"grant": str(grant.pk)}, headers)
    assert refused.status_code == 403 and refused.json()["error"] == "insufficient_scope"
    assert "access_token" not in refused.json()


@pytest.mark.django_db(transaction=True)
def test_a_removed_rule_stops_access_at_once(api, grant, rule, bearer):
    headers = bearer()
    assert post(api, {"grant": str(grant.pk)}, headers).status_code == 200
    rule.delete()
    refused = post(api, {"grant": str(grant.pk)}, headers)
    assert refused.status_code == 404 and "access_token" not in refused.json()


@pytest.mark.django_db(transaction=True)
def test_a_rescued_refresh_is_applied_before_a_stored_token_is_served(api, grant, rule, bearer):
    """The database write of a refresh failed and its response waits in Redis: the stored
    tokens are superseded at the provider, so the valid-looking stored one is not served."""
    from django.utils import timezone

    from broker.providers.oauth2_client import TokenResponse
    from broker.refresh.doubt_marks import Rescue, rescue_pending, stash_rescue

    rescued = TokenResponse(
        access_token="rescued-access",
        refresh_token="rescued-refresh",
        expires_in=3600,
        scopes=None,
        token_type="Bearer",
    )
    stash_rescue(
        grant.pk,
        Rescue(response=rescued, based_on_version=grant.token_version, received_at=timezone.now()),
    )
    response = post(api, {"grant": str(grant.pk)}, bearer())
    assert response.status_code == 200
    assert response.json()["access_token"] == "rescued-access"
    grant.refresh_from_db()
    assert grant.unseal("refresh_token") == "rescued-refresh"
    assert not rescue_pending(grant.pk)


@pytest.mark.django_db(transaction=True)
def test_a_token_being_refreshed_is_not_served_until_the_refresh_commits(api, grant, rule, bearer):
    """Another process is refreshing the grant (its lock held, its refresh marked in
    flight): the provider may already have retired the stored access token (rotation), so
    the request waits for the refresh's result instead of serving the stored one."""
    started = time.monotonic()
    with refreshing_elsewhere(grant):
        response = post(api, {"grant": str(grant.pk)}, bearer())
    assert response.status_code == 200
    assert response.json()["access_token"] == REFRESHED_ACCESS_TOKEN
    assert 0.5 <= time.monotonic() - started < 5  # until the lock was released


# -- a token that carries more than the rules allow ------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_token_wider_than_the_rules_is_refused_with_no_refresh(
    api, owner, local_app, local_server, service_with_secret, bearer
):
    """No provider can issue a narrower token without shrinking the grant other services
    rely on: the wider token is refused, and nothing is asked of the provider."""
    from broker.models import AccessRule

    grant = consented_grant(owner, local_app, scopes=["read", "write"])
    AccessRule.objects.create(
        service=service_with_secret[0], provider_app=local_app, scopes=["read"]
    )
    before = Grant.objects.filter(pk=grant.pk).values().get()

    response = post(api, {"grant": str(grant.pk), "force_refresh": True}, bearer())
    assert response.status_code == 403, response.content
    assert response.json()["error"] == "insufficient_scope"
    assert "write" in response.json()["error_description"]
    assert "access_token" not in response.json()
    assert local_server.requests == []
    assert Grant.objects.filter(pk=grant.pk).values().get() == before


def test_while_redis_is_unreachable_it_answers_json_503_with_retry_after(
    api, grant, rule, bearer, settings
):
    headers = bearer()
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    response = post(api, {"grant": str(grant.pk)}, headers)
    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert response.json()["error"] == "temporarily_unavailable"
    assert "access_token" not in response.json()


# -- the hot path's Redis round trips ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_valid_stored_token_costs_three_redis_round_trips(api, grant, rule, bearer, redis_sends):
    """The rate limit, the refresh's doubt marks (read after the grant), and the audit event
    with the metric: nothing else of the answer is in Redis."""
    headers = bearer()
    post(api, {"grant": str(grant.pk)}, headers)  # opens the connections
    redis_sends.clear()
    response = post(api, {"grant": str(grant.pk)}, headers)
    assert response.status_code == 200
    assert len(redis_sends) == 3


@pytest.mark.django_db(transaction=True)
def test_a_stored_token_being_refreshed_is_not_served_until_the_refresh_commits(
    api, grant, rule, bearer
):
    """The in-flight mark, read after the grant, keeps the stored token from being served."""
    headers = bearer()
    assert post(api, {"grant": str(grant.pk)}, headers).status_code == 200
    with refreshing_elsewhere(grant):
        response = post(api, {"grant": str(grant.pk)}, headers)
    assert response.status_code == 200
    assert response.json()["access_token"] == REFRESHED_ACCESS_TOKEN


@pytest.mark.django_db(transaction=True)
def test_a_caller_waiting_on_a_refresh_queries_nothing_before_it_ends(api, grant, rule, bearer):
    """A burst of callers on one refresh must not take the database's connections while
    they wait: a caller reads the grant before its wait, then nothing until the refresh
    ends (then one read of its result)."""
    headers = bearer()
    assert post(api, {"grant": str(grant.pk)}, headers).status_code == 200
    queried_at: list[float] = []

    def timed(execute, sql, params, many, context):
        queried_at.append(time.monotonic())
        return execute(sql, params, many, context)

    started = time.monotonic()
    with refreshing_elsewhere(grant, commits_after=0.5), connection.execute_wrapper(timed):
        response = post(api, {"grant": str(grant.pk), "force_refresh": True}, headers)
    assert response.status_code == 200
    assert response.json()["access_token"] == REFRESHED_ACCESS_TOKEN
    during_the_wait = [t for t in queried_at if started + 0.25 < t < started + 0.5]
    assert queried_at and during_the_wait == []


@pytest.mark.django_db(transaction=True)
def test_a_stored_token_with_a_rescued_refresh_is_not_served(api, grant, rule, bearer):
    """A rescued response waits: the rescue flag, read after the grant, sends the request
    to apply it."""
    from broker.providers.oauth2_client import TokenResponse
    from broker.refresh.doubt_marks import Rescue, stash_rescue

    headers = bearer()
    assert post(api, {"grant": str(grant.pk)}, headers).status_code == 200
    rescued = TokenResponse("rescued-access", "rescued-refresh", 3600, None, "Bearer")
    stash_rescue(
        grant.pk,
        Rescue(response=rescued, based_on_version=grant.token_version, received_at=timezone.now()),
    )
    response = post(api, {"grant": str(grant.pk)}, headers)
    assert response.status_code == 200
    assert response.json()["access_token"] == "rescued-access"
