"""The one HTTP client for the broker's outbound requests.

Provider endpoints (token, identity, resources, revocation, OAuth 1.0a), the identity
providers' key sets (JWKS) and single sign-on's exchanges with the company's IdP
(discovery, code exchange, JWKS; accounts.oidc_client): `provider_session`.
Every call made through it ends within BROKER_PROVIDER_TIMEOUT seconds in total: connect,
TLS, headers, body and redirects together. requests' own timeouts bound each connect and
each read, not the exchange, so a server trickling one byte a second would keep a call
(and the refresh lock around it) alive indefinitely; here a watchdog shuts the sockets
down when the deadline passes, and the call fails with `DeadlineExceeded`, a Timeout.
A call sent with `stream=True` (the proxy's) returns once the headers are in; its body is
read afterwards, still inside the `with provider_session(...)` block and its deadline.
An answer's `json()` is the bounded parser's (`BoundedJsonResponse`).
`provider_session(..., keep_alive=True)` (the proxy's) takes its connections from one pool
per process and leaves them there, so that a call does not open a new TCP and TLS
connection each time; a deadline then only ever cuts the connections its own call holds
(a connection goes to whichever call sends on it last).
Proxies come from the environment as requests reads them (HTTP_PROXY, HTTPS_PROXY,
ALL_PROXY, NO_PROXY; the CA bundle from REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE), read once per
origin and process rather than on every call (`environment_proxies`); .netrc credentials
are not used.

Webhook URLs (typed in by operators or services): `post`. Such a URL must not become a way
into the broker's own network (SSRF): every address the host name resolves to must be
public, unless it falls in BROKER_WEBHOOK_ALLOWED_NETWORKS. The check runs where the
socket is opened, on the very address connected to, so a DNS answer that changes between a
check and the connection (rebinding) cannot slip through. Timeouts are short, redirects are
not followed, and proxies from the environment are ignored.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import itertools
import os
import socket
import threading
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3 import PoolManager, ProxyManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from broker.infra import bounded_json
from broker.infra.request_id import HEADER, current_request_id

CONNECT_TIMEOUT_SECONDS = 3.05
READ_TIMEOUT_SECONDS = 10

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DestinationRefused(Exception):
    """The URL's host is not a public address (or not allow-listed); nothing was sent."""


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in settings.BROKER_WEBHOOK_ALLOWED_NETWORKS]


# IPv6 ranges whose last 32 bits are an IPv4 address that the packets end up at: IPv4-
# mapped (RFC 4291 2.5.5.2), IPv4-compatible (2.5.5.1, deprecated), IPv4-translated
# (RFC 2765), NAT64's well-known prefix (RFC 6052). 6to4 (RFC 3056, 2002::/16) carries
# one in bits 16-48 (`sixtofour`).
IPV4_EMBEDDING_NETWORKS = [
    ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "::/96", "::ffff:0:0:0/96", "64:ff9b::/96")
]
# NAT64's local-use prefix (RFC 8215): where the IPv4 address sits is up to the operator,
# so none of it counts as public.
LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in network for network in IPV4_EMBEDDING_NETWORKS):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def check_address(address: str) -> IPAddress:
    """Refuses private, loopback, link-local, reserved and multicast addresses, also when an
    IPv6 address only wraps one (::ffff:10.0.0.1, 64:ff9b::127.0.0.1, 2002:a9fe:a9fe::)."""
    ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in LOCAL_NAT64 and not is_allowed(ip):
            raise DestinationRefused(f"{ip} is not a public address (local-use NAT64)")
        ip = embedded_ipv4(ip) or ip  # where the packets end up is what counts
    if is_allowed(ip):
        return ip
    if not ip.is_global or ip.is_multicast:
        raise DestinationRefused(f"{ip} is not a public address")
    return ip


def is_allowed(ip: IPAddress) -> bool:
    return any(ip in network for network in allowed_networks())


def resolve_checked(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, all checked; refuses if any one is not allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DestinationRefused(f"cannot resolve {host}: {exc.strerror}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise DestinationRefused(f"{host} has no address")
    for address in addresses:
        check_address(address)
    return addresses


class _GuardedConnectionMixin:
    """Connects only to an address that passed `resolve_checked`."""

    _dns_host: str
    port: int

    def _new_conn(self) -> socket.socket:
        name = self._dns_host
        addresses = resolve_checked(name, self.port)
        # urllib3 connects to `_dns_host`: the checked address, not a new lookup. `host` reads
        # it too, and names the server to TLS (SNI, the certificate's check) and in the Host
        # header: that stays the name (tests/infra/test_urllib3_internals.py).
        self._dns_host = addresses[0]
        try:
            return super()._new_conn()  # type: ignore[misc]
        finally:
            self._dns_host = name


class _GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class _GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPConnectionPool,
            "https": _GuardedHTTPSConnectionPool,
        }


def check_url(url: str) -> None:
    """Refuses URLs that are not http(s), carry credentials, or point at a refused address."""
    parts = urlsplit(url)
    schemes = {"https", "http"} if settings.BROKER_ALLOW_HTTP or settings.DEBUG else {"https"}
    if parts.scheme not in schemes:
        raise DestinationRefused(f"scheme {parts.scheme!r} is not allowed")
    if parts.username or parts.password:
        raise DestinationRefused("URLs with credentials are not allowed")
    if not parts.hostname:
        raise DestinationRefused("the URL has no host")
    resolve_checked(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))


def with_request_id(headers: Mapping[str, str]) -> dict[str, str]:
    """`headers` and, while a request is served, its id (broker.infra.request_id), so the
    other side's logs can be matched with ours."""
    request_id = current_request_id()
    return dict(headers) if request_id is None else {**headers, HEADER: request_id}


def post(url: str, body: bytes, headers: Mapping[str, str]) -> requests.Response:
    """POSTs `body`; raises DestinationRefused before anything is sent to a refused host, and
    requests.RequestException for network errors. The response body is not read."""
    check_url(url)
    with requests.Session() as session:
        session.trust_env = False  # no proxies or .netrc credentials from the environment
        adapter = _GuardedAdapter(max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        response = session.post(
            url,
            data=body,
            headers=with_request_id(headers),
            timeout=(CONNECT_TIMEOUT_SECONDS, READ_TIMEOUT_SECONDS),
            allow_redirects=False,
            stream=True,
        )
        response.close()
        return response


# -- provider calls: one total deadline per call ------------------------------------------------


@functools.lru_cache(maxsize=256)
def _environment_proxies(origin: str) -> dict[str, str]:
    return requests.utils.get_environ_proxies(origin)


def environment_proxies(url: str) -> dict[str, str]:
    """The proxies requests would take from the environment for `url` (none when NO_PROXY
    names its host), read once per origin and process: requests itself reads the whole
    environment twice on every call, a tenth of a refresh's CPU."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    origin = f"{parts.scheme}://[{host}]" if ":" in host else f"{parts.scheme}://{host}"
    if parts.port is not None:
        origin += f":{parts.port}"
    return dict(_environment_proxies(origin))


def environment_ca_bundle() -> str | None:
    """The CA bundle requests would take from the environment (None: its own)."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


SessionT = TypeVar("SessionT", bound=requests.Session)


class DeadlineExceeded(requests.Timeout):
    """The call had no complete answer within its total deadline; it was cut off."""


class Deadline:
    """The moment by which a whole call must be over, enforced by the process's watchdog:
    when it passes, the sockets of the call's connections are shut down, so a read blocked
    on a trickling server returns at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends_at = time.monotonic() + seconds
        self.passed = threading.Event()
        self._connections: list[HTTPConnection] = []
        # (connection, the socket it sent on): the answer may be read from that socket after
        # http.client detached it from the connection (`Connection: close`).
        self._sockets: list[tuple[HTTPConnection, socket.socket]] = []
        self._lock = threading.Lock()
        self.cancelled = False

    def remaining(self) -> float:
        return max(0.0, self.ends_at - time.monotonic())

    def start(self) -> None:
        self.ends_at = time.monotonic() + self.seconds
        _watchdog.watch(self)

    def cancel(self) -> None:
        """The call is over: its connections are no longer its own to cut."""
        with self._lock:
            self.cancelled = True
            self._connections.clear()
            self._sockets.clear()

    def watch(self, connection: HTTPConnection) -> None:
        """Connecting or sending: whatever socket the connection holds when time is up,
        unless another call has sent on the connection since (a kept-alive connection)."""
        connection._broker_deadline = self  # type: ignore[attr-defined]
        with self._lock:
            self._connections.append(connection)
        if self.passed.is_set():
            self._cut_off()

    def watch_socket(self, connection: HTTPConnection, sock: socket.socket | None) -> None:
        """The socket an answer is read from, which http.client may detach from its
        connection (`Connection: close`) and hand to the response."""
        if sock is not None:
            with self._lock:
                self._sockets.append((connection, sock))
        if self.passed.is_set():
            self._cut_off()

    def _owns(self, connection: HTTPConnection) -> bool:
        return getattr(connection, "_broker_deadline", None) is self

    def _cut_off(self) -> None:
        with self._lock:
            self.passed.set()
            sockets = [
                c.sock for c in self._connections if c.sock is not None and self._owns(c)
            ] + [
                sock
                for connection, sock in self._sockets
                if self._owns(connection) or connection.sock is not sock
            ]
        for sock in sockets:
            try:
                # The plain socket's shutdown, also for a TLS socket: it wakes a blocked
                # read without touching the TLS state the reading thread is using.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass  # already closed


class _Watchdog:
    """One thread per process that cuts off each call whose deadline passed, earliest first
    (a timer thread per call cost more CPU than a token request's own work). Deadlines of
    calls that ended stay queued, inert, until their time."""

    def __init__(self) -> None:
        self._wakeup = threading.Condition()
        self._queue: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()  # ties broken by arrival, never by Deadline
        self._thread: threading.Thread | None = None

    def watch(self, deadline: Deadline) -> None:
        with self._wakeup:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="provider-call-deadlines", daemon=True
                )
                self._thread.start()
            heapq.heappush(self._queue, (deadline.ends_at, next(self._order), deadline))
            if self._queue[0][2] is deadline:  # earlier than what the thread waits for
                self._wakeup.notify()

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue or self._queue[0][0] > time.monotonic():
                    wait = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._wakeup.wait(wait)
                _, _, deadline = heapq.heappop(self._queue)
            if not deadline.cancelled:
                deadline._cut_off()


_watchdog = _Watchdog()


def _watchdog_after_fork() -> None:
    """A forked child has no watchdog thread, and its copy of the lock may be held."""
    global _watchdog
    _watchdog = _Watchdog()


os.register_at_fork(after_in_child=_watchdog_after_fork)


# The deadline of the call running in this thread, for the connections it opens or reuses.
_current_deadline: ContextVar[Deadline | None] = ContextVar("provider_call_deadline", default=None)


class _WatchedConnectionMixin:
    """Hands every connection a call uses, new or kept alive, to that call's watchdog."""

    sock: socket.socket | None

    def connect(self) -> None:
        deadline = _current_deadline.get()
        if deadline is not None:
            deadline.watch(self)  # type: ignore[arg-type]
        super().connect()  # type: ignore[misc]

    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline = _current_deadline.get()
        if deadline is not None:
            deadline.watch(self)  # type: ignore[arg-type]
        super().request(*args, **kwargs)  # type: ignore[misc]
        if deadline is not None:
            deadline.watch_socket(self, self.sock)  # type: ignore[arg-type]


class _WatchedHTTPConnection(_WatchedConnectionMixin, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnectionMixin, HTTPSConnection):
    pass


class _WatchedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


WATCHED_POOLS = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}


class BoundedJsonResponse(requests.Response):
    """A provider's or identity provider's answer whose `json()` is the bounded parser
    (broker.infra.bounded_json): a document nested too deeply or too large raises a
    ValueError like any other bad JSON, for the broker's code and Authlib's alike."""

    def json(self, **kwargs: Any) -> Any:
        return bounded_json.loads(self.text if self.encoding else self.content)


class _DeadlineAdapter(HTTPAdapter):
    """Sends each request (redirects included) with what is left of one deadline, and reads
    the body before the deadline too."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline
        super().__init__(max_retries=0)

    def close(self) -> None:
        """Closing the session closes its adapters: the call is over, so is its watch."""
        self.deadline.cancel()
        super().close()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if isinstance(manager, ProxyManager):  # an HTTP(S) proxy from the environment
            manager.pool_classes_by_scheme = WATCHED_POOLS
        return manager

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        remaining = self.deadline.remaining()
        if remaining <= 0 or self.deadline.passed.is_set():
            raise self.exceeded(request)
        kwargs["timeout"] = (min(CONNECT_TIMEOUT_SECONDS, remaining), remaining)
        # The session does not read the environment (`provider_session`): this does, for
        # this request's URL (also after a redirect), as requests would have.
        kwargs["proxies"] = environment_proxies(request.url or "") | (kwargs.get("proxies") or {})
        if kwargs.get("verify") is True:
            kwargs["verify"] = environment_ca_bundle() or True
        if (request_id := current_request_id()) is not None:
            request.headers[HEADER] = request_id
        token = _current_deadline.set(self.deadline)
        try:
            response = super().send(request, *args, **kwargs)
            if not kwargs.get("stream"):
                response.content  # noqa: B018 (the body belongs to the call and its deadline)
        except requests.RequestException as exc:
            if self.deadline.passed.is_set():
                raise self.exceeded(request) from exc
            raise
        finally:
            _current_deadline.reset(token)
        if self.deadline.passed.is_set():  # the cut-off may look like a normal end of body
            raise self.exceeded(request)
        return response

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        response = super().build_response(req, resp)
        response.__class__ = BoundedJsonResponse  # the same object, its JSON read with bounds
        return response

    def exceeded(self, request: requests.PreparedRequest) -> DeadlineExceeded:
        host = urlsplit(request.url or "").hostname
        return DeadlineExceeded(
            f"{host} gave no complete answer within {self.deadline.seconds:g} s", request=request
        )


# Connections kept alive between the calls that ask for it (`keep_alive=True`), per process:
# up to KEEP_ALIVE_PER_HOST idle ones per host (more are opened when needed, closed after).
KEEP_ALIVE_PER_HOST = 32
KEEP_ALIVE_HOSTS = 64
_kept_alive_lock = threading.Lock()
_kept_alive: list[PoolManager] = []


def _kept_alive_pool() -> PoolManager:
    with _kept_alive_lock:
        if not _kept_alive:
            pool = PoolManager(num_pools=KEEP_ALIVE_HOSTS, maxsize=KEEP_ALIVE_PER_HOST)
            pool.pool_classes_by_scheme = WATCHED_POOLS
            _kept_alive.append(pool)
        return _kept_alive[0]


class _KeptAliveDeadlineAdapter(_DeadlineAdapter):
    """A deadline adapter over the process's pool of kept-alive connections."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        self.poolmanager = _kept_alive_pool()

    def close(self) -> None:
        """The call is over, so is its watch; the shared pool stays open."""
        self.deadline.cancel()
        for manager in self.proxy_manager.values():
            manager.clear()


@overload
def provider_session(
    *, seconds: float | None = None, keep_alive: bool = False
) -> requests.Session: ...
@overload
def provider_session(
    session: SessionT, *, seconds: float | None = None, keep_alive: bool = False
) -> SessionT: ...
def provider_session(
    session: requests.Session | None = None,
    *,
    seconds: float | None = None,
    keep_alive: bool = False,
) -> requests.Session:
    """A session (a new plain one, or the one given, e.g. Authlib's) for one exchange with a
    provider or an identity provider: everything sent through it ends within `seconds`
    (BROKER_PROVIDER_TIMEOUT by default) from now, or raises DeadlineExceeded, until it is
    closed. Use it as `with provider_session(...) as session:`, which closes it; libraries
    that close their sessions themselves (Authlib's OpenID Connect client) can take it as
    it is. With `keep_alive`, its connections stay in the process's pool for later calls."""
    session = session if session is not None else requests.Session()
    session.trust_env = False  # the adapter reads the environment's proxies, once per origin
    deadline = Deadline(seconds if seconds is not None else settings.BROKER_PROVIDER_TIMEOUT)
    adapter = (_KeptAliveDeadlineAdapter if keep_alive else _DeadlineAdapter)(deadline)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    deadline.start()
    return session
