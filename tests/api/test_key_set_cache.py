"""Identity providers' key sets are fetched at most once per BROKER_JWKS_REFETCH_SECONDS
per issuer (broker.infra.key_sets): tokens naming unknown kids (random ones, as an
attacker sends) cost the IdP nothing within the interval, and a key the IdP really rolls
in is picked up once the interval has passed."""

from __future__ import annotations

import secrets
import time

import pytest
from joserfc.jwk import RSAKey

from broker.models import Grant
from tests.api.conftest import audit_events, exchange
from tests.subject_idp import SubjectIdp

pytestmark = pytest.mark.django_db

DISCOVERY = "/.well-known/openid-configuration"


def fetches(idp: SubjectIdp) -> tuple[int, int]:
    """(discovery, JWKS) fetches the IdP has answered."""
    return sum(r.path == DISCOVERY for r in idp.server.requests), idp.jwks_fetches()


def random_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(8)}, private=True)


def test_random_kids_fetch_the_keys_once_per_interval_and_a_rolled_key_is_picked_up_after(
    api, idp, alice, assistant, grant: Grant, key_set_clock
):
    strangers = [random_key() for _ in range(4)]
    for attempt in range(20):
        forged = idp.token("alice-sub", key=strangers[attempt % len(strangers)])
        response = exchange(api, assistant, forged)
        assert response.status_code == 400, response.content
        assert response.json()["error"] == "invalid_request"
    assert fetches(idp) == (1, 1)
    assert not audit_events(action="token.exchanged")

    rolled = RSAKey.generate_key(2048, parameters={"kid": "key-2"})
    idp.publish(idp.key, rolled)  # the IdP rolls in a new key and signs with it at once
    assert exchange(api, assistant, idp.token("alice-sub", key=rolled)).status_code == 400
    assert fetches(idp) == (1, 1)  # within the interval: refused, nothing fetched

    key_set_clock.pass_refetch_interval()
    response = exchange(api, assistant, idp.token("alice-sub", key=rolled))
    assert response.status_code == 200, response.content
    assert fetches(idp) == (2, 2)
    for _ in range(5):  # the known keys are served from the cache again
        assert exchange(api, assistant, idp.token("alice-sub", key=rolled)).status_code == 200
        assert exchange(api, assistant, idp.token("alice-sub", key=random_key())).status_code == 400
    assert exchange(api, assistant, idp.token("alice-sub")).status_code == 200
    assert fetches(idp) == (2, 2)


def test_an_idp_that_is_down_is_asked_once_per_interval(
    api, idp, alice, assistant, grant, key_set_clock
):
    documents = dict(idp.server.documents)
    idp.server.documents.clear()  # every path answers 404
    for _ in range(5):
        response = exchange(api, assistant, idp.token("alice-sub"))
        assert response.status_code == 400
        assert "cannot load the issuer's keys" in response.json()["error_description"]
    assert fetches(idp) == (1, 0)
    idp.server.documents.update(documents)
    key_set_clock.pass_refetch_interval()
    assert exchange(api, assistant, idp.token("alice-sub")).status_code == 200
    assert fetches(idp) == (2, 1)


def test_threads_missing_the_same_issuers_keys_share_one_fetch(key_set_clock):
    from concurrent.futures import ThreadPoolExecutor

    from joserfc.jwk import KeySet

    from broker.infra import key_sets

    calls = []
    published = KeySet([RSAKey.generate_key(2048, parameters={"kid": "k1"})])

    def fetch() -> KeySet:
        calls.append(1)
        time.sleep(0.2)  # a slow IdP: the other threads arrive meanwhile
        return published

    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda n: key_sets.key_set("https://idp", f"kid-{n}", fetch), range(16))
        )
    assert len(calls) == 1 and all(answer is published for answer in answers)
