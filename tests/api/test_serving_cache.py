"""The per-process caches of the token fetch (grant rows, access rules) never outlive a
change: revocation, refresh, consent, rule, group, user, app and service changes take effect
on the next request, and without Redis nothing is served from them."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
import requests
from django.db import transaction
from django.test import override_settings
from django.utils import timezone

from broker.api import ratelimit, tokens, warm_path
from broker.api.views import LAST_USED_RESOLUTION
from broker.audit import trail
from broker.infra import serving_versions
from broker.infra.redis_connection import redis_client
from broker.models import AccessRule, AuditEvent, Grant, ServiceClient
from broker.ops import metrics
from broker.providers.oauth2_client import TokenResponse
from broker.refresh import engine
from broker.revocation.revoke import revoke_grant
from tests.api.conftest import fetch_token
from tests.factories import consented_grant, service_and_secret
from tests.gunicorn_server import gunicorn

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/access-token"


def fetch(api, grant, headers) -> Any:
    return api.post(URL, {"grant": str(grant.pk)}, content_type="application/json", **headers)


@pytest.fixture
def warm(api, grant, rule, bearer, django_assert_max_num_queries):
    """Headers of a service whose fetches of `grant` come from the caches (checked: the
    third fetch makes no database query)."""
    headers = bearer()
    for _ in range(2):  # the first seeds the serving versions, the second fills the caches
        assert fetch(api, grant, headers).status_code == 200
    with django_assert_max_num_queries(0):
        served = fetch(api, grant, headers)
    assert served.status_code == 200
    assert served.json()["access_token"] == grant.unseal("access_token")
    return headers


def test_a_revocation_stops_the_cached_token_at_once(api, grant, warm):
    assert revoke_grant(grant.pk, actor_type="admin", actor="root", reason="test")
    refused = fetch(api, grant, warm)
    assert refused.status_code == 409 and "access_token" not in refused.json()


def test_a_refresh_serves_the_new_token_at_once(api, grant, warm):
    stored = Grant.objects.select_related("user", "provider_app").get(pk=grant.pk)
    response = TokenResponse(
        access_token="at-rotated",
        refresh_token="rt-rotated",
        expires_in=3600,
        scopes=None,
        token_type="Bearer",
    )
    assert engine.persist_refresh(
        stored, response, seen_version=stored.token_version, received_at=timezone.now()
    )
    assert fetch(api, grant, warm).json()["access_token"] == "at-rotated"


def test_a_saved_grant_serves_its_new_token_at_once(api, grant, warm):
    """A grant saved with new tokens (a new consent of the same account, the admin)."""
    grant.seal("access_token", "at-reconsented")
    grant.save()
    assert fetch(api, grant, warm).json()["access_token"] == "at-reconsented"


def test_a_removed_rule_hides_the_grant_at_once(api, grant, rule, warm):
    rule.delete()
    assert fetch(api, grant, warm).status_code == 404


def test_a_narrowed_rule_refuses_the_token_at_once(api, grant, rule, warm):
    rule.scopes = ["read:me"]
    rule.save()
    refused = fetch(api, grant, warm)
    assert refused.status_code == 403 and "access_token" not in refused.json()


def test_a_rule_for_a_group_stops_when_the_user_leaves_it(
    api, owner, grant, rule, group, bearer, django_assert_max_num_queries
):
    owner.groups.add(group)
    rule.users_group = group
    rule.save()
    headers = bearer()
    for _ in range(2):
        assert fetch(api, grant, headers).status_code == 200
    with django_assert_max_num_queries(0):
        assert fetch(api, grant, headers).status_code == 200
    owner.groups.remove(group)
    assert fetch(api, grant, headers).status_code == 404


def test_a_deactivated_user_gets_nothing_at_once(api, owner, grant, warm):
    owner.is_active = False
    owner.save(update_fields=["is_active"])
    assert fetch(api, grant, warm).status_code == 404


def test_a_disabled_app_gets_nothing_at_once(api, atlassian, grant, warm):
    atlassian.enabled = False
    atlassian.save()
    assert fetch(api, grant, warm).status_code == 404


def test_a_disabled_service_gets_nothing_at_once(api, grant, rule, warm):
    tokens.disable_service(rule.service)
    assert fetch(api, grant, warm).status_code == 401


def test_nothing_is_cached_while_a_writer_is_in_flight(api, grant, warm, django_assert_num_queries):
    writer = serving_versions.begin_write(serving_versions.grant_scope(grant.pk))
    with django_assert_num_queries(1):  # the grant, from the database
        assert fetch(api, grant, warm).status_code == 200
    # A writer that left without committing anything (rollback): caching resumes.
    serving_versions.end_write(writer, serving_versions.grant_scope(grant.pk))
    assert fetch(api, grant, warm).status_code == 200
    with django_assert_num_queries(0):
        assert fetch(api, grant, warm).status_code == 200


def test_without_redis_no_cached_token_is_served(api, grant, warm):
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        refused = fetch(api, grant, warm)
    assert refused.status_code == 503 and "access_token" not in refused.json()
    assert refused["Retry-After"]


def test_a_row_loaded_before_a_commit_is_never_served_after_it(api, grant, warm):
    """The race the writers' bracket closes: a reader reads the versions, a revocation
    bumps them and commits, the reader loads the still-active row (before the commit) and
    caches it. A later reader must not be served from that entry."""
    scope = serving_versions.grant_scope(grant.pk)
    writer = serving_versions.begin_write(scope)
    fetch(api, grant, warm)  # loads the active row while the writer is in flight
    Grant.objects.filter(pk=grant.pk).update(status=Grant.Status.REVOKED)  # the commit
    refused = fetch(api, grant, warm)  # after the commit, before the writer settled
    assert refused.status_code == 409 and "access_token" not in refused.json()
    serving_versions.end_write(writer, scope)
    refused = fetch(api, grant, warm)
    assert refused.status_code == 409 and "access_token" not in refused.json()


def test_an_expired_entry_is_reloaded(api, grant, warm, django_assert_num_queries, monkeypatch):
    later = time.monotonic() + serving_versions.MAX_AGE_SECONDS + 1
    monkeypatch.setattr(time, "monotonic", lambda: later)
    with django_assert_num_queries(2):  # the grant and the rules, each reloaded
        assert fetch(api, grant, warm).status_code == 200


def test_no_token_is_served_after_a_revocation_commits_under_load(grant, rule, bearer, tmp_path):
    """Threads fetch the grant's token from gunicorn (gunicorn.conf.py) while it is revoked:
    every request sent after the revocation committed is refused."""
    headers = {"Authorization": bearer()["HTTP_AUTHORIZATION"], "Content-Type": "application/json"}
    body = {"grant": str(grant.pk)}
    served_after: list[float] = []
    answered = {"served": 0, "refused": 0}
    committed_at: list[float] = []
    stop = threading.Event()
    with gunicorn(tmp_path / "gunicorn.log") as url:

        def load() -> None:
            session = requests.Session()
            while not stop.is_set():
                sent = time.monotonic()
                response = session.post(f"{url}{URL}", json=body, headers=headers, timeout=10)
                if response.status_code == 200:
                    answered["served"] += 1
                    if committed_at and sent > committed_at[0]:
                        served_after.append(sent - committed_at[0])
                else:
                    assert response.status_code == 409, response.text
                    answered["refused"] += 1

        threads = [threading.Thread(target=load) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(2)  # the caches of every worker are warm
        served_before = answered["served"]
        with transaction.atomic():
            # Registered first, so it runs first once the revocation commits.
            transaction.on_commit(lambda: committed_at.append(time.monotonic()))
            assert revoke_grant(grant.pk, actor_type="admin", actor="root", reason="load test")
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join()
    assert served_before > 50  # the load ran, and was served
    assert answered["refused"] > 20
    assert served_after == []


def test_the_grant_cache_stays_bounded(api, owner, atlassian, rule, bearer, monkeypatch):
    from broker.api import grant_lookup

    monkeypatch.setattr(grant_lookup, "MAX_ENTRIES", 3)
    headers = bearer()
    for n in range(5):
        grant = consented_grant(
            owner, atlassian, external_account_id=f"acct-{n}", scopes=["read:me"]
        )
        for _ in range(2):
            assert fetch(api, grant, headers).status_code == 200
        assert len(grant_lookup._grants) <= 3


# -- the warm path (broker.api.warm_path): one confirmation, nothing written unless it holds


def test_the_rate_limit_holds_on_the_warm_path(api, grant, rule, warm):
    """Each warm answer counts once; the answer beyond the limit is refused (429) by the
    usual path, which counts it."""
    client_id = rule.service.client_id
    for _ in range(3):  # a minute starting during an attempt restarts the count: again
        key = ratelimit.counter_key(client_id)
        used = int(redis_client().get(key) or 0)
        with override_settings(BROKER_API_RATE_LIMIT=used + 2):
            answers = [fetch(api, grant, warm).status_code for _ in range(3)]
        if ratelimit.counter_key(client_id) == key:
            break
    assert answers == [200, 200, 429]
    assert int(redis_client().get(key) or 0) == used + 3


def token_issues(client_id: str) -> int:
    field = metrics.token_issue_field(client_id, "issued")
    return int(redis_client().hget(metrics.TOKEN_ISSUES, field) or 0)


def test_warm_answers_are_audited_and_counted_once(
    api, grant, rule, warm, django_assert_max_num_queries
):
    trail.write_local_copy()
    trail.flush_buffer()
    issued = AuditEvent.objects.filter(action="token.issued", grant_id=grant.pk)
    stored, counted = issued.count(), token_issues(rule.service.client_id)
    with django_assert_max_num_queries(0):
        for _ in range(3):
            assert fetch(api, grant, warm).status_code == 200
    # Both copies of each event reach the database; each is stored once.
    trail.write_local_copy()
    trail.flush_buffer()
    assert issued.count() == stored + 3
    assert token_issues(rule.service.client_id) == counted + 3


def test_a_warm_answer_with_the_audit_buffer_full_is_written_directly(api, grant, warm):
    trail.write_local_copy()
    trail.flush_buffer()
    issued = AuditEvent.objects.filter(action="token.issued", grant_id=grant.pk)
    stored = issued.count()
    with override_settings(BROKER_AUDIT_BUFFER_MAX=0):
        assert fetch(api, grant, warm).status_code == 200
    assert issued.count() == stored + 1
    assert redis_client().llen(trail.BUFFER_KEY) == 0


def test_a_refused_confirmation_writes_nothing(api, grant, rule, warm):
    """A warm answer whose confirmation fails (here: the grant was revoked) pushes no
    event, counts no issue and no request: the usual path refuses, audited as such."""
    client_id = rule.service.client_id
    trail.write_local_copy()
    trail.flush_buffer()
    issued = AuditEvent.objects.filter(action="token.issued", grant_id=grant.pk)
    stored, counted = issued.count(), token_issues(client_id)
    used = int(redis_client().get(ratelimit.counter_key(client_id)) or 0)
    assert revoke_grant(grant.pk, actor_type="admin", actor="root", reason="test")
    assert fetch(api, grant, warm).status_code == 409
    trail.flush_buffer()
    assert issued.count() == stored
    assert AuditEvent.objects.filter(action="token.denied", grant_id=grant.pk).exists()
    assert token_issues(client_id) == counted
    # Counted once, by the usual path (or 1 in a new minute).
    assert int(redis_client().get(ratelimit.counter_key(client_id)) or 0) in (used + 1, 1)


@pytest.mark.parametrize("loss", ["script flushed", "connections killed"])
def test_a_warm_answer_survives_redis_losing_its_script_or_connections(
    api, grant, rule, warm, loss, django_assert_max_num_queries
):
    """CONFIRM runs on the warm path's own connections: when Redis forgot the script (a
    restart) or dropped those connections, the request is answered the usual way, audited
    and counted once, and the next is warm again."""
    client_id = rule.service.client_id
    trail.write_local_copy()
    trail.flush_buffer()
    issued = AuditEvent.objects.filter(action="token.issued", grant_id=grant.pk)
    stored, counted = issued.count(), token_issues(client_id)
    if loss == "script flushed":
        redis_client().script_flush()
    else:
        assert redis_client().client_kill_filter(_type="normal", skipme=True) >= 1
    served = fetch(api, grant, warm)
    assert served.status_code == 200
    assert served.json()["access_token"] == grant.unseal("access_token")
    trail.flush_buffer()
    assert (issued.count(), token_issues(client_id)) == (stored + 1, counted + 1)
    with django_assert_max_num_queries(0):
        assert fetch(api, grant, warm).status_code == 200


# -- answers repeated from memory (warm_path.may_repeat): the view does not run again; each
# answer is confirmed, audited and counted on its own; none outlives what it stood on


@pytest.fixture
def view_runs(monkeypatch) -> list[str]:
    """The grants the access-token view looked up (a repeated answer looks up none)."""
    from broker.api import views

    runs: list[str] = []
    find_grant = views._find_grant

    def counted(request, body):
        runs.append(str(body.get("grant")))
        return find_grant(request, body)

    monkeypatch.setattr(views, "_find_grant", counted)
    return runs


def test_a_repeated_answer_is_confirmed_audited_and_counted_each_time(
    api, grant, rule, warm, view_runs, django_assert_max_num_queries
):
    client_id = rule.service.client_id
    trail.write_local_copy()
    trail.flush_buffer()
    issued = AuditEvent.objects.filter(action="token.issued", grant_id=grant.pk)
    before, counted = set(issued.values_list("event_id", flat=True)), token_issues(client_id)
    window = ratelimit.counter_key(client_id)
    used = int(redis_client().get(window) or 0)
    with django_assert_max_num_queries(0):
        answers = [fetch(api, grant, warm) for _ in range(3)]
    if ratelimit.counter_key(client_id) == window:  # not checkable across a new minute
        assert int(redis_client().get(window) or 0) == used + 3
    assert view_runs == []
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all(a["Cache-Control"] == "no-store" for a in answers)
    assert all(a["Content-Type"] == "application/json" for a in answers)
    body = answers[-1].json()
    assert body["access_token"] == grant.unseal("access_token")
    assert (body["grant"], body["scopes"]) == (str(grant.pk), ["read:jira-work", "read:me"])
    left = datetime.fromisoformat(body["expires_at"]) - timezone.now()
    assert abs(body["expires_in"] - left.total_seconds()) <= 1
    trail.write_local_copy()
    trail.flush_buffer()
    events = list(issued.exclude(event_id__in=before))
    assert len(events) == 3 and len({e.event_id for e in events}) == 3
    assert {(e.service, e.subject_user, e.client_ip) for e in events} == {
        (client_id, "alice", "127.0.0.1")
    }
    assert token_issues(client_id) == counted + 3


def test_a_repeated_answer_counts_the_seconds_left_when_it_is_sent(
    api, grant, warm, view_runs, monkeypatch
):
    first = fetch(api, grant, warm).json()["expires_in"]
    later = timezone.now() + timedelta(seconds=30)
    monkeypatch.setattr(timezone, "now", lambda: later)
    again = fetch(api, grant, warm).json()["expires_in"]
    assert view_runs == []
    assert first - 32 <= again <= first - 29


def test_the_last_use_is_written_again_after_a_minute(api, grant, warm, view_runs, monkeypatch):
    later = timezone.now() + LAST_USED_RESOLUTION + timedelta(seconds=1)
    monkeypatch.setattr(timezone, "now", lambda: later)
    assert fetch(api, grant, warm).status_code == 200
    assert Grant.objects.get(pk=grant.pk).last_used_at == later
    view_runs.clear()
    for _ in range(3):
        assert fetch(api, grant, warm).status_code == 200
    assert len(view_runs) <= 1  # repeated again once the view ran warm


@pytest.fixture
def second_service(api, atlassian) -> tuple[ServiceClient, dict[str, str]]:
    """Another service allowed the same grants, and headers with its broker token."""
    service, secret = service_and_secret("second")
    AccessRule.objects.create(
        service=service, provider_app=atlassian, scopes=["read:me", "read:jira-work"]
    )
    token = fetch_token(api, service, secret)["access_token"]
    return service, {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def test_a_use_by_another_service_ends_the_repeats_so_this_ones_is_noted_again(
    api, grant, rule, second_service, warm
):
    other, other_headers = second_service
    assert fetch(api, grant, other_headers).status_code == 200
    assert Grant.objects.get(pk=grant.pk).last_used_by_id == other.pk
    assert fetch(api, grant, warm).status_code == 200
    assert Grant.objects.get(pk=grant.pk).last_used_by_id == rule.service.pk


def test_no_answer_is_repeated_once_the_token_no_longer_lasts_min_ttl(
    api, owner, local_app, local_server, service_with_secret, bearer, view_runs, monkeypatch
):
    """The token lasts min_ttl for 5 s more; then the fetch must refresh, not repeat."""
    now = timezone.now()
    grant = consented_grant(
        owner, local_app, scopes=["read"], access_expires_at=now + timedelta(seconds=3600)
    )
    # A token issued an hour earlier, lasting two: min_ttl is capped at 7,170 s, not below.
    Grant.objects.filter(pk=grant.pk).update(
        consented_at=now - timedelta(seconds=3600), last_refreshed_at=None
    )
    AccessRule.objects.create(
        service=service_with_secret[0], provider_app=local_app, scopes=["read"]
    )
    headers = bearer()
    body = {"grant": str(grant.pk), "min_ttl": 3595}

    def fetch_with_min_ttl() -> Any:
        return api.post(URL, body, content_type="application/json", **headers)

    stored = grant.unseal("access_token")
    for _ in range(4):
        assert fetch_with_min_ttl().json()["access_token"] == stored
    assert len(view_runs) == 3  # the fourth was repeated
    local_server.bodies.append(
        b'{"access_token": "renewed-at", "token_type": "Bearer", "expires_in": 3600,'
        b' "refresh_token": "renewed-rt", "scope": "read"}'
    )
    later = now + timedelta(seconds=6)
    monkeypatch.setattr(timezone, "now", lambda: later)
    assert fetch_with_min_ttl().json()["access_token"] == "renewed-at"
    assert [r.path for r in local_server.requests] == ["/token"]


def test_only_the_same_request_gets_a_repeated_answer(api, grant, rule, warm, view_runs):
    counted = token_issues(rule.service.client_id)
    same_body = json.dumps({"grant": str(grant.pk)})
    refused = api.post(URL, same_body, content_type="text/plain", **warm)
    assert refused.status_code == 415 and "access_token" not in refused.json()
    assert token_issues(rule.service.client_id) == counted
    other = api.post(
        URL, {"grant": str(grant.pk), "min_ttl": 120}, content_type="application/json", **warm
    )
    assert other.status_code == 200 and view_runs == [str(grant.pk)]


def test_the_repeatable_answers_stay_bounded(api, grant, warm, monkeypatch):
    monkeypatch.setattr(warm_path, "MAX_REPEATABLE", 2)
    for min_ttl in range(60, 66):
        body = {"grant": str(grant.pk), "min_ttl": min_ttl}
        for _ in range(2):
            assert api.post(URL, body, content_type="application/json", **warm).status_code == 200
        assert 1 <= len(warm_path._repeatable) <= 2
