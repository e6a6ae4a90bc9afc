"""The access-token hot path's grant: from this process's cache when Redis says it is
current, from the database otherwise.

A valid-token fetch makes no database query: the grant row (with its app and user) is
kept per process, stamped with the serving versions (broker.infra.serving_versions) it was
loaded under. The versions ride in the broker-token check's Redis pipeline
(`queue_prefetch`, called by broker.api.auth), so the cache costs no extra round trip.
Whether the stored token is in doubt (broker.refresh.engine.stored_token_in_doubt) is read
in the same command: for a cached grant the versions vouch that the row is what the
database held at that instant, so the read counts as made after the grant's; a grant read
from the database after the prefetch is checked again after its read
(`stored_token_in_doubt`). Revocation, refresh, consent,
user, group, app, rule and service changes move the versions before and after they
commit, so no request whose versions were read after such a commit is served the old row.
Without Redis the request is refused (503) before it gets here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.http import HttpRequest
from redis.client import Pipeline

from broker.api import schema
from broker.infra import serving_versions
from broker.models import Grant
from broker.refresh import engine

# Only what an access-token answer needs; anything else loads on first access (deferred).
COLUMNS = (
    "status",
    "scopes",
    "resources",
    "external_account_id",
    "account_name",
    "account_email",
    "access_token_sealed",
    "access_expires_at",
    # Read with the token it versions: the refresh-in-doubt check compares it with the
    # in-flight mark (loaded later, it could belong to a token committed since).
    "token_version",
    "consented_at",
    "last_refreshed_at",
    "last_used_at",
    "last_used_by_id",
    "provider_app__slug",
    "provider_app__kind",
    "provider_app__enabled",
    "provider_app__scopes",
    "provider_app__base_url",
    "provider_app__endpoints",
    "user__username",
    "user__is_active",
    # What a call that must wait for a refresh reads before its wait
    # (`engine.ensure_fresh(..., as_read=...)`): loaded here, a burst of callers on one
    # refresh takes no database connection until it ends. Sealed, as in the database.
    "failure_count",
    "refresh_token_sealed",
)

# Bounded: the grants one process serves; beyond this the cache starts over.
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Prefetched:
    """What the broker-token check's Redis round trip read for this request."""

    grant_id: uuid.UUID | None
    # Serving stamp of the RULES scope, and of (RULES, the grant); None: no cache now.
    rules_stamp: serving_versions.Stamp | None
    grant_stamp: serving_versions.Stamp | None
    # engine.doubt_keys of the grant, read in the same command as grant_stamp.
    rescued: bool
    in_flight_from: bytes | None


@dataclass(frozen=True)
class _Entry:
    grant: Grant
    stamp: serving_versions.Stamp
    loaded_at: float


_grants: dict[uuid.UUID, _Entry] = {}


def grant_id_in_body(request: HttpRequest) -> uuid.UUID | None:
    """The `grant` a JSON body names, if any (the view validates the body itself)."""
    if request.method != "POST":
        return None
    try:
        named = schema.json_object(request).get("grant")
        return uuid.UUID(named) if isinstance(named, str) else None
    except Exception:  # anything odd: no prefetch; the view answers it
        return None


def queue_prefetch(request: HttpRequest, pipe: Pipeline) -> Callable[[Sequence[object]], None]:
    """Adds the serving versions this request needs to `pipe`;
    returns what to call with their results, which sets `request.serving`."""
    grant_id = grant_id_in_body(request)
    scopes = [serving_versions.RULES]
    rescue_key: list[str] = []
    in_flight_key: list[str] = []
    if grant_id is not None:
        scopes.append(serving_versions.grant_scope(grant_id))
        rescue, in_flight = engine.doubt_keys(grant_id)
        rescue_key, in_flight_key = [rescue], [in_flight]
    serving_versions.queue_read(pipe, scopes, exists=rescue_key, get=in_flight_key)

    def finish(results: Sequence[object]) -> None:
        [read] = results
        assert isinstance(read, list)
        versions = read[: 2 * len(scopes)]
        rules_stamp = serving_versions.stamp_of(scopes[:1], versions[:2])
        grant_stamp = None
        rescued, in_flight_from = False, None
        if grant_id is not None:
            grant_stamp = serving_versions.stamp_of(scopes, versions)
            rescued, in_flight_from = bool(read[-2]), read[-1]
            assert in_flight_from is None or isinstance(in_flight_from, bytes)
        request.serving = Prefetched(  # type: ignore[attr-defined]
            grant_id, rules_stamp, grant_stamp, rescued, in_flight_from
        )

    return finish


def prefetched(request: HttpRequest) -> Prefetched | None:
    return getattr(request, "serving", None)


def _load(grant_id: uuid.UUID) -> Grant | None:
    return (
        Grant.objects.select_related("provider_app", "user")
        .only(*COLUMNS)
        .filter(pk=grant_id)
        .first()
    )


def cached(grant_id: uuid.UUID) -> tuple[Grant, serving_versions.Stamp] | None:
    """This process's copy of the grant and its stamp, if it holds one young enough to
    serve (broker.api.warm_path assumes it is still current, then confirms it). A grant
    loaded again gets a new copy: the old one is not reloaded in place."""
    entry = _grants.get(grant_id)
    if entry is None or time.monotonic() - entry.loaded_at >= serving_versions.MAX_AGE_SECONDS:
        return None
    return entry.grant, entry.stamp


def grant_by_id(grant_id: uuid.UUID | str, request: HttpRequest | None = None) -> Grant | None:
    """The grant (with `provider_app` and `user` loaded), or None. Shared between the
    requests of this process when it comes from the cache: read it, never change it."""
    pk = uuid.UUID(str(grant_id))
    serving = prefetched(request) if request is not None else None
    stamp = serving.grant_stamp if serving is not None and serving.grant_id == pk else None
    if stamp is None:
        return _load(pk)
    entry = _grants.get(pk)
    now = time.monotonic()
    if (
        entry is not None
        and entry.stamp == stamp
        and now - entry.loaded_at < serving_versions.MAX_AGE_SECONDS
    ):
        # What `stored_token_in_doubt` may vouch for with the prefetch's read.
        request.grant_from_cache = entry.grant  # type: ignore[union-attr]
        return entry.grant
    grant = _load(pk)
    if grant is not None:
        if len(_grants) >= MAX_ENTRIES:
            _grants.clear()
        _grants[pk] = _Entry(grant, stamp, now)
    return grant


def stored_token_in_doubt(grant: Grant, request: HttpRequest | None = None) -> bool:
    """engine.stored_token_in_doubt, without a round trip of its own when `grant` is the
    cached copy this request was served under the prefetch's versions: the doubt keys were
    read in the same command as those versions, the instant the copy was current."""
    serving = prefetched(request) if request is not None else None
    if serving is not None and getattr(request, "grant_from_cache", None) is grant:
        return engine.in_doubt(grant, serving.rescued, serving.in_flight_from)
    return engine.stored_token_in_doubt(grant)


def forget_cached_grants() -> None:
    """Drops this process's grant cache (tests)."""
    _grants.clear()
