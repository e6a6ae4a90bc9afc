"""Identity providers' key sets (JWKS), cached per issuer in each process, under one policy
for every reader: subject tokens (broker.api.subject_tokens), app tokens from trusted
identity providers (broker.service_identity.federation) and single sign-on (accounts.oidc_client).

An issuer's keys are fetched at most once per BROKER_JWKS_REFETCH_SECONDS, whatever asks
and whatever the answer. A token naming a `kid` the cached set lacks (an IdP rolling its
keys, or a stranger sending random kids) fetches again only once that interval has passed
since the last fetch; until then the miss is answered from the cache, and the token fails
its signature check. A set is used for BROKER_JWKS_MAX_AGE_SECONDS, then fetched again when
next needed. A failed fetch counts as a fetch: the previous set, if any, goes on serving,
and otherwise the failure is the answer until the interval has passed, so an IdP that is
down is not called by every request. One fetch per issuer at a time: threads that need the
same issuer's keys meanwhile wait for its result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from joserfc.jwk import KeySet


class KeySetUnavailable(Exception):
    """The issuer's keys could not be fetched; the message says why (no secrets)."""


# A `kid` no key has: "the cached set did not have the key" when the caller cannot say
# which kid it looked for (Authlib's forced refetch).
UNKNOWN_KID = object()


@dataclass(frozen=True)
class _Entry:
    keys: KeySet | None
    fetched_at: float  # the last fetch, successful or not (time.monotonic)
    loaded_at: float  # when `keys` were fetched
    error: str = ""


_entries: dict[str, _Entry] = {}
_fetch_locks: dict[str, threading.Lock] = {}
_lock = threading.Lock()


def _has(keys: KeySet, kid: object) -> bool:
    return kid is None or any(key.kid == kid for key in keys.keys)


def _cached(entry: _Entry | None, kid: object, now: float) -> KeySet | None:
    """The answer the cache gives without fetching, or None when a fetch is due."""
    if entry is None:
        return None
    fresh = now - entry.loaded_at < settings.BROKER_JWKS_MAX_AGE_SECONDS
    if entry.keys is not None and fresh and _has(entry.keys, kid):
        return entry.keys
    if now - entry.fetched_at >= settings.BROKER_JWKS_REFETCH_SECONDS:
        return None
    if entry.keys is None:
        raise KeySetUnavailable(entry.error)
    return entry.keys  # a miss (or an old set) within the interval: no fetch


def key_set(issuer: str, kid: object, fetch: Callable[[], KeySet]) -> KeySet:
    """The keys of `issuer` for a token naming `kid` (None: any key will do), fetched with
    `fetch` when the policy says so. `fetch` raises KeySetUnavailable when it cannot get
    them; this raises it when no set is at hand."""
    with _lock:
        entry = _entries.get(issuer)
        fetch_lock = _fetch_locks.setdefault(issuer, threading.Lock())
    found = _cached(entry, kid, time.monotonic())
    if found is not None:
        return found
    with fetch_lock:
        with _lock:
            latest = _entries.get(issuer)
        if latest is not entry:  # another thread fetched while this one waited
            found = _cached(latest, kid, time.monotonic())
            if found is not None:
                return found
        try:
            keys = fetch()
        except KeySetUnavailable as exc:
            now = time.monotonic()
            kept = latest.keys if latest else None
            failed = _Entry(kept, now, latest.loaded_at if latest else now, str(exc))
            with _lock:
                _entries[issuer] = failed
            if kept is None:
                raise
            return kept
        now = time.monotonic()
        with _lock:
            _entries[issuer] = _Entry(keys, now, now)
        return keys


def forget() -> None:
    """Drops this process's cached key sets (tests; a changed trust configuration)."""
    with _lock:
        _entries.clear()
