"""PostgreSQL (or SQLite) decides every answer, in the request that gives it: a revocation,
refresh, consent, rule, group, user, app or service change takes effect for every request
that starts after it commits, however it was written (a model's save(), a queryset's
update(), the admin, a command), under load, and whatever Redis forgets or goes back to."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import requests
from django.core.management import call_command
from django.db import transaction
from django.test import Client, override_settings
from django.utils import timezone

from accounts.models import User
from broker.infra.redis_connection import redis_client
from broker.models import AccessRule, Grant, ProviderApp, ServiceClient
from broker.providers.oauth2_client import TokenResponse
from broker.refresh import single_flight
from broker.revocation.revoke import revoke_grant
from broker.service_identity import service_secrets, tokens
from tests.gunicorn_server import gunicorn

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/v1/access-token"


def fetch(api, grant, headers) -> Any:
    return api.post(URL, {"grant": str(grant.pk)}, content_type="application/json", **headers)


@pytest.fixture
def served(api, grant, rule, bearer) -> dict[str, str]:
    """Headers of a service that was just served `grant`'s token."""
    headers = bearer()
    answer = fetch(api, grant, headers)
    assert answer.status_code == 200
    assert answer.json()["access_token"] == grant.unseal("access_token")
    return headers


# -- one request after the change -----------------------------------------------------------


def test_a_revocation_stops_the_token_at_once(api, grant, served):
    assert revoke_grant(grant.pk, actor_type="admin", actor="root", reason="test")
    refused = fetch(api, grant, served)
    assert refused.status_code == 409 and "access_token" not in refused.json()


def test_a_refresh_serves_the_new_token_at_once(api, grant, served):
    stored = Grant.objects.select_related("user", "provider_app").get(pk=grant.pk)
    response = TokenResponse(
        access_token="at-rotated",
        refresh_token="rt-rotated",
        expires_in=3600,
        scopes=None,
        token_type="Bearer",
    )
    assert single_flight.persist_refresh(
        stored, response, seen_version=stored.token_version, received_at=timezone.now()
    )
    assert fetch(api, grant, served).json()["access_token"] == "at-rotated"


def test_a_saved_grant_serves_its_new_token_at_once(api, grant, served):
    """A grant saved with new tokens (a new consent of the same account, the admin)."""
    grant.seal("access_token", "at-reconsented")
    grant.save()
    assert fetch(api, grant, served).json()["access_token"] == "at-reconsented"


def test_a_removed_rule_hides_the_grant_at_once(api, grant, rule, served):
    rule.delete()
    assert fetch(api, grant, served).status_code == 404


def test_a_narrowed_rule_refuses_the_token_at_once(api, grant, rule, served):
    AccessRule.objects.filter(pk=rule.pk).update(scopes=["read:me"])
    refused = fetch(api, grant, served)
    assert refused.status_code == 403 and "access_token" not in refused.json()


def test_a_rule_for_a_group_stops_when_the_user_leaves_it(api, owner, grant, rule, group, served):
    owner.groups.add(group)
    AccessRule.objects.filter(pk=rule.pk).update(users_group=group)
    assert fetch(api, grant, served).status_code == 200
    owner.groups.remove(group)
    assert fetch(api, grant, served).status_code == 404


@pytest.mark.parametrize("how", ["save", "update"])
def test_a_deactivated_user_gets_nothing_at_once(api, owner, grant, served, how):
    """Whether one user is saved or an offboarding script updates many rows at once."""
    if how == "save":
        owner.is_active = False
        owner.save(update_fields=["is_active"])
    else:
        assert User.objects.filter(pk=owner.pk).update(is_active=False) == 1
    refused = fetch(api, grant, served)
    assert refused.status_code == 404 and "access_token" not in refused.json()


def test_a_disabled_app_gets_nothing_at_once(api, atlassian, grant, served):
    ProviderApp.objects.filter(pk=atlassian.pk).update(enabled=False)
    assert fetch(api, grant, served).status_code == 404


def test_without_redis_no_token_is_served(api, grant, served):
    with override_settings(REDIS_URL="redis://127.0.0.1:1/0"):
        refused = fetch(api, grant, served)
    assert refused.status_code == 503 and "access_token" not in refused.json()
    assert refused["Retry-After"]


# -- Redis going back in time (a failover to a replica that lost the last writes) ------------


def _snapshot() -> dict[bytes, tuple[bytes, int]]:
    client = redis_client()
    return {key: (client.dump(key), client.pttl(key)) for key in client.scan_iter("*")}


def _roll_back(snapshot: dict[bytes, tuple[bytes, int]]) -> None:
    client = redis_client()
    client.flushdb()
    for key, (dumped, ttl) in snapshot.items():
        client.restore(key, max(ttl, 0), dumped, replace=True)


@pytest.mark.parametrize(
    ("change", "refused_with"),
    [
        (lambda g, r, o: revoke_grant(g.pk, actor_type="admin", actor="root", reason="t"), 409),
        (lambda g, r, o: tokens.disable_service(r.service), 401),
        (lambda g, r, o: User.objects.filter(pk=o.pk).update(is_active=False), 404),
        (lambda g, r, o: AccessRule.objects.filter(pk=r.pk).update(scopes=["read:me"]), 403),
    ],
    ids=["revoked", "service_disabled", "user_deactivated", "rule_narrowed"],
)
def test_a_redis_rolled_back_to_before_a_change_serves_nothing_it_forbids(
    api, owner, grant, rule, served, change, refused_with
):
    before = _snapshot()
    change(grant, rule, owner)
    _roll_back(before)
    refused = fetch(api, grant, served)
    assert refused.status_code == refused_with, refused.content
    assert "access_token" not in refused.json()


# -- no plaintext kept -------------------------------------------------------------------------


def _holds(value: Any, secret: str, depth: int = 0) -> bool:
    if depth > 6:
        return False
    if isinstance(value, str):
        return secret in value
    if isinstance(value, bytes | bytearray):
        return secret.encode() in value
    if isinstance(value, dict):
        return any(
            _holds(k, secret, depth + 1) or _holds(v, secret, depth + 1)
            for k, v in list(value.items())
        )
    if isinstance(value, list | tuple | set | frozenset):
        return any(_holds(item, secret, depth + 1) for item in list(value))
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return _holds(dict(vars(value)), secret, depth + 1)
    return False


def test_no_module_of_the_broker_keeps_a_served_token(api, grant, served):
    """What the process remembers between requests (module-level state of every broker
    module) never holds a provider token it served, before or after a revocation."""
    plaintext = grant.unseal("access_token")
    assert fetch(api, grant, served).json()["access_token"] == plaintext
    revoke_grant(grant.pk, actor_type="admin", actor="root", reason="test")
    modules = [m for name, m in list(sys.modules.items()) if name.split(".")[0] == "broker"]
    assert modules
    holding = [
        f"{module.__name__}.{name}"
        for module in modules
        for name, value in list(vars(module).items())
        if not name.startswith("__") and _holds(value, plaintext)
    ]
    assert holding == []


# -- under load, through gunicorn (gunicorn.conf.py) -------------------------------------------


def _admin() -> Client:
    admin = Client()
    root = User.objects.create_superuser("root", "root@example.com", "root-broker")
    admin.force_login(root)
    return admin


def _untick_enabled(service: ServiceClient) -> None:
    """The service's change form in the admin, saved with "enabled" unticked."""
    admin = _admin()
    url = f"/admin/broker/serviceclient/{service.pk}/change/"
    form = {
        "client_id": service.client_id,
        "name": service.name,
        "webhook_url": "",
        "subject_audiences": "[]",
        **{
            f"{prefix}-{field}": value
            for prefix in ("rules", "keys")
            for field, value in (
                ("TOTAL_FORMS", "0"),
                ("INITIAL_FORMS", "0"),
                ("MIN_NUM_FORMS", "0"),
                ("MAX_NUM_FORMS", "1000"),
            )
        },
    }
    response = admin.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    service.refresh_from_db()
    assert not service.enabled


def _admin_disable_action(service: ServiceClient) -> None:
    response = _admin().post(
        "/admin/broker/serviceclient/",
        {"action": "disable_services", "_selected_action": [str(service.pk)]},
    )
    assert response.status_code == 302


def _admin_rotate_without_grace(service: ServiceClient) -> None:
    response = _admin().post(
        "/admin/broker/serviceclient/",
        {
            "action": "rotate_secret",
            "_selected_action": [str(service.pk)],
            "apply": "1",
            "grace_hours": "0",
        },
    )
    assert response.status_code == 200 and b"bks_" in response.content


def _saved_disabled(service: ServiceClient) -> None:
    service.enabled = False
    service.save()


def _updated_disabled(service: ServiceClient) -> None:
    ServiceClient.objects.filter(pk=service.pk).update(enabled=False)


CREDENTIAL_CHANGES: dict[str, Callable[[ServiceClient], Any]] = {
    "admin_change_form": _untick_enabled,
    "admin_disable_action": _admin_disable_action,
    "admin_rotate_secret_no_grace": _admin_rotate_without_grace,
    "command_disableserviceclient": lambda s: call_command("disableserviceclient", s.client_id),
    "rotate_secret_no_grace": lambda s: service_secrets.rotate_secret(s, timedelta(0)),
    "model_save": _saved_disabled,
    "queryset_update": _updated_disabled,
}


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory, django_db_setup, django_db_blocker) -> Any:
    """One gunicorn (gunicorn.conf.py) for the module's load tests, on the test database."""
    with gunicorn(tmp_path_factory.mktemp("gunicorn") / "gunicorn.log") as url:
        yield url


def _served_after(
    url: str, headers: dict[str, str], body: dict[str, Any], change: Callable[[], Any]
) -> tuple[int, int, list[float]]:
    """Four threads fetch while `change` runs: (served before it, refused after it, and how
    long after its end each request sent later was still served)."""
    answered = {"before": 0, "refused": 0}
    done_at: list[float] = []
    served_after: list[float] = []
    stop = threading.Event()
    failures: list[str] = []

    def load() -> None:
        session = requests.Session()
        while not stop.is_set():
            sent = time.monotonic()
            response = session.post(f"{url}{URL}", json=body, headers=headers, timeout=15)
            if response.status_code == 200:
                if done_at and sent > done_at[0]:
                    served_after.append(sent - done_at[0])
                elif not done_at:
                    answered["before"] += 1
            elif response.status_code in (401, 403, 404, 409, 429):  # 429: failures throttled
                answered["refused"] += 1
            else:
                failures.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    with transaction.atomic():
        # Registered first, so that it runs as soon as the change commits.
        transaction.on_commit(lambda: done_at.append(time.monotonic()))
        change()
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == []
    return answered["before"], answered["refused"], served_after


@pytest.mark.slow
@pytest.mark.parametrize("how", list(CREDENTIAL_CHANGES))
def test_a_service_whose_credentials_change_is_refused_at_once_under_load(
    broker_url, grant, rule, bearer, how
):
    """Issue: with four threads fetching, a rotation without grace, an unticked "enabled"
    or a plain save() still served old-token requests for seconds after the commit."""
    headers = {"Authorization": bearer()["HTTP_AUTHORIZATION"]}
    service = ServiceClient.objects.get(pk=rule.service_id)
    before, refused, served_after = _served_after(
        broker_url, headers, {"grant": str(grant.pk)}, lambda: CREDENTIAL_CHANGES[how](service)
    )
    assert before > 10  # the load ran, and was served
    assert refused > 10
    assert served_after == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "how",
    [
        "revocation",
        "user_saved_inactive",
        "users_updated_inactive",
        "command_deactivateusers",
        "rule_narrowed",
    ],
)
def test_a_grant_or_user_change_serves_nothing_after_it_commits_under_load(
    broker_url, owner, grant, rule, bearer, how
):
    """Issue: a bulk deactivation (`.update(is_active=False)`) left the user's token served
    until a cache aged out. A narrowed rule refuses the token (403) just as fast."""
    changes: dict[str, Callable[[], Any]] = {
        "revocation": lambda: revoke_grant(
            grant.pk, actor_type="admin", actor="root", reason="load test"
        ),
        "user_saved_inactive": lambda: _deactivated(owner),
        "users_updated_inactive": lambda: User.objects.filter(pk=owner.pk).update(is_active=False),
        "command_deactivateusers": lambda: call_command(
            "deactivateusers", owner.username, "--reason", "left the company"
        ),
        "rule_narrowed": lambda: AccessRule.objects.filter(pk=rule.pk).update(scopes=["read:me"]),
    }
    headers = {"Authorization": bearer()["HTTP_AUTHORIZATION"]}
    before, refused, served_after = _served_after(
        broker_url,
        headers,
        {"user": owner.username, "provider": grant.provider_app.slug},
        changes[how],
    )
    assert before > 10
    assert refused > 10
    assert served_after == []


def _deactivated(user: User) -> None:
    user.is_active = False
    user.save()
