"""broker.infra.outbound_http builds on parts of urllib3 that are not its documented API. An
upgrade of urllib3 (requirements.in; `make lock UPGRADE=--upgrade-package=urllib3`) that
changes one of them fails a test here, whose message names what broke:

- `HTTPConnection._new_conn()` opens the socket, for HTTP and HTTPS alike, to
  `(self._dns_host, self.port)`: the SSRF guard (`_GuardedConnectionMixin`) checks the
  addresses there and connects to the checked one; `host` is read from `_dns_host`;
- `HTTPConnectionPool.ConnectionCls`: the class a pool makes its connections from;
- `PoolManager.pool_classes_by_scheme` (ProxyManager's too): the pool class per scheme;
- the pool calls `connect()` for a new connection and `request()` for every request, in the
  calling thread, and the answer is read from the socket `sock` holds after `request()`,
  even once http.client detached it (`Connection: close`): the deadline's watchdog cuts
  that socket, and a connection takes an attribute of ours (`_broker_deadline`);
- `HTTPResponse.CONTENT_DECODERS`: the encodings urllib3 decodes (broker.api.proxy).

requests' adapter hooks used with them (`init_poolmanager`, `proxy_manager_for`) are tried
here too, through the adapters outbound_http mounts."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from urllib3 import PoolManager, ProxyManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.response import HTTPResponse

from broker.infra.outbound_http import (
    WATCHED_POOLS,
    Deadline,
    DestinationRefused,
    _current_deadline,
    _DeadlineAdapter,
    _GuardedAdapter,
    _GuardedHTTPConnection,
    _GuardedHTTPConnectionPool,
    _GuardedHTTPSConnection,
    _GuardedHTTPSConnectionPool,
    _kept_alive_pool,
    _KeptAliveDeadlineAdapter,
    _WatchedHTTPConnectionPool,
    _WatchedHTTPSConnectionPool,
)
from tests.local_http import self_signed_certificate, serve_tls, start_trickling_server

# -- local servers: plain and TLS, on the address "localhost" resolves to first ------------


@dataclass
class Server:
    server: ThreadingHTTPServer
    host_headers: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.server_address[1]


def localhost_address() -> tuple[socket.AddressFamily, str]:
    """Where the guard connects "localhost" to: the first address it resolves to."""
    family, _, _, _, address = socket.getaddrinfo("localhost", 80, type=socket.SOCK_STREAM)[0]
    return family, str(address[0])


def start_server(certificate: tuple[str, str] | None = None) -> Server:
    """Answers every GET 200 with an empty body, keeping the connection alive, and records
    the Host header it was sent."""
    holder: dict[str, Server] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            holder["state"].host_headers.append(self.headers.get("Host", ""))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    family, address = localhost_address()

    class LocalhostServer(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

    server = LocalhostServer((address, 0), Handler)
    if certificate is not None:
        serve_tls(server, certificate)
    holder["state"] = Server(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return holder["state"]


@pytest.fixture
def allow_localhost(settings) -> None:
    settings.BROKER_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8", "::1/128"]


@pytest.fixture
def certificate(tmp_path) -> tuple[str, str]:
    """Valid for the name "localhost" only, not for an address."""
    return self_signed_certificate(tmp_path, "localhost")


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.server.shutdown()
        server.server.server_close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listening socket nobody accepts on: `accepted_nothing` tells whether a connection
    came in."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def accepted_nothing(listener: socket.socket) -> bool:
    try:
        listener.accept()[0].close()
    except BlockingIOError:
        return True
    return False


@contextlib.contextmanager
def within(deadline: Deadline) -> Iterator[Deadline]:
    """The calls made in this block belong to `deadline`, as inside `_DeadlineAdapter.send`."""
    token = _current_deadline.set(deadline)
    try:
        yield deadline
    finally:
        _current_deadline.reset(token)


# -- the SSRF guard: `_new_conn` and `_dns_host` -----------------------------------------------


def test_a_connection_opens_its_socket_to_its_dns_host(servers):
    servers.append(server := start_server())
    _, address = localhost_address()
    connection = HTTPConnection("name-that-does-not-resolve.invalid", server.port, timeout=5)
    assert getattr(connection, "_dns_host", None) == "name-that-does-not-resolve.invalid", (
        "urllib3's HTTPConnection no longer keeps the host to connect to in `_dns_host`: "
        "outbound_http's _GuardedConnectionMixin reads and replaces it"
    )
    connection._dns_host = address
    try:
        connection.connect()
        assert connection.sock is not None
        peer = connection.sock.getpeername()[:2]
    except OSError as exc:
        pytest.fail(
            "urllib3's HTTPConnection._new_conn() no longer connects to `_dns_host`: the SSRF "
            f"guard would check one address and connect to a new lookup ({exc!r})"
        )
    finally:
        connection.close()
    assert peer == (address, server.port), (
        "urllib3's HTTPConnection._new_conn() connected elsewhere than `_dns_host`"
    )
    connection._dns_host = "example.org."
    assert connection.host == "example.org", "urllib3's `host` no longer reads `_dns_host`"


@pytest.mark.parametrize(
    "connection_class", [_GuardedHTTPConnection, _GuardedHTTPSConnection], ids=["http", "https"]
)
def test_connect_refuses_a_private_address_before_opening_a_socket(
    connection_class, listener, settings
):
    settings.BROKER_WEBHOOK_ALLOWED_NETWORKS = []
    connection = connection_class("127.0.0.1", listener.getsockname()[1], timeout=2)
    with pytest.raises(DestinationRefused):
        connection.connect()
    assert connection.sock is None
    assert accepted_nothing(listener), (
        f"urllib3's {connection_class.__mro__[2].__name__}.connect() opened a socket without "
        "calling _new_conn(), where the SSRF guard runs"
    )


@pytest.mark.parametrize(
    "pool_class", [_GuardedHTTPConnectionPool, _GuardedHTTPSConnectionPool], ids=["http", "https"]
)
def test_a_guarded_pool_connects_only_through_its_connection_cls(pool_class, listener, settings):
    settings.BROKER_WEBHOOK_ALLOWED_NETWORKS = []
    pool = pool_class("127.0.0.1", listener.getsockname()[1], timeout=2, retries=False)
    try:
        with pytest.raises(DestinationRefused):
            pool.urlopen("GET", "/")
    finally:
        pool.close()
    assert accepted_nothing(listener), (
        "urllib3's connection pools no longer make their connections from `ConnectionCls`: "
        "the SSRF guard was bypassed"
    )


def test_a_guarded_tls_connection_names_the_host_not_the_address(
    servers, certificate, allow_localhost
):
    """The guard connects to the checked address; TLS still checks the certificate against
    the host's name (a certificate names hosts, rarely addresses), and the Host header too."""
    servers.append(server := start_server(certificate))
    pool = _GuardedHTTPSConnectionPool(
        "localhost", server.port, ca_certs=certificate[0], cert_reqs="CERT_REQUIRED", timeout=5
    )
    try:
        response = pool.urlopen("GET", "/", retries=False)
    finally:
        pool.close()
    assert response.status == 200
    assert server.host_headers == [f"localhost:{server.port}"]


def test_a_guarded_plain_connection_sends_the_host_name(servers, allow_localhost):
    servers.append(server := start_server())
    pool = _GuardedHTTPConnectionPool("localhost", server.port, timeout=5)
    try:
        assert pool.urlopen("GET", "/", retries=False).status == 200
    finally:
        pool.close()
    assert server.host_headers == [f"localhost:{server.port}"]


# -- pool classes: `pool_classes_by_scheme`, through requests' adapters --------------------------


def pool_class_of(manager: PoolManager, url: str) -> type:
    return type(manager.connection_from_url(url))


def test_pool_managers_make_pools_of_the_classes_set_per_scheme():
    guarded = _GuardedAdapter().poolmanager
    assert pool_class_of(guarded, "http://example.org/") is _GuardedHTTPConnectionPool, (
        "urllib3's PoolManager no longer takes its pool classes from `pool_classes_by_scheme` "
        "(or requests' HTTPAdapter no longer calls init_poolmanager): webhooks are unguarded"
    )
    assert pool_class_of(guarded, "https://example.org/") is _GuardedHTTPSConnectionPool

    adapter = _DeadlineAdapter(Deadline(1))
    assert pool_class_of(adapter.poolmanager, "http://example.org/") is WATCHED_POOLS["http"]
    assert pool_class_of(adapter.poolmanager, "https://example.org/") is WATCHED_POOLS["https"]

    proxy = adapter.proxy_manager_for("http://127.0.0.1:3128")
    assert isinstance(proxy, ProxyManager)
    # Plain HTTP goes to the proxy's own pool, HTTPS through a tunnel from the target's pool.
    assert pool_class_of(proxy, "http://example.org/") is _WatchedHTTPConnectionPool, (
        "urllib3's ProxyManager no longer takes its pool classes from "
        "`pool_classes_by_scheme`: provider calls through a proxy escape their deadline"
    )
    assert pool_class_of(proxy, "https://example.org/") is _WatchedHTTPSConnectionPool
    adapter.close()


def test_kept_alive_adapters_share_the_process_pool():
    first, second = _KeptAliveDeadlineAdapter(Deadline(1)), _KeptAliveDeadlineAdapter(Deadline(1))
    assert first.poolmanager is second.poolmanager is _kept_alive_pool()
    assert pool_class_of(first.poolmanager, "https://example.org/") is WATCHED_POOLS["https"]
    first.close()
    second.close()


# -- the deadline: `connect()`, `request()` and `sock` -----------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_every_connection_a_call_uses_is_handed_to_its_deadline(
    tls, servers, certificate, allow_localhost
):
    servers.append(server := start_server(certificate if tls else None))
    if tls:
        pool = _WatchedHTTPSConnectionPool(
            "localhost", server.port, ca_certs=certificate[0], cert_reqs="CERT_REQUIRED"
        )
    else:
        pool = _WatchedHTTPConnectionPool("localhost", server.port)
    try:
        with within(Deadline(5)) as first:
            assert pool.urlopen("GET", "/", retries=False).status == 200
        assert first._connections, (
            "urllib3 no longer calls HTTPConnection.connect()/request() for a new connection "
            "in the calling thread: a provider call's deadline would not see its connection"
        )
        connection = first._connections[0]
        assert isinstance(connection, HTTPSConnection if tls else HTTPConnection)
        assert getattr(connection, "_broker_deadline", None) is first, (
            "urllib3's connections no longer take an attribute (`_broker_deadline`)"
        )
        sent_on = [sock for owner, sock in first._sockets if owner is connection]
        assert sent_on and sent_on[0] is connection.sock, (
            "after urllib3's HTTPConnection.request(), `sock` is not the socket sent on"
        )

        with within(Deadline(5)) as second:  # the same connection, kept alive
            assert pool.urlopen("GET", "/", retries=False).status == 200
        assert second._connections == [connection], (
            "urllib3 no longer calls HTTPConnection.request() on a kept-alive connection: "
            "a deadline would not cut a call that reuses one"
        )
        assert second._owns(connection) and not first._owns(connection)
    finally:
        pool.close()


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_cutting_the_socket_sent_on_ends_a_blocked_read(phase, allow_localhost):
    """The trickling server closes the connection after its answer (`Connection: close`), so
    http.client detaches the socket from the connection: the one noted at `request()` is the
    one the answer is read from, and shutting it down wakes the read at once."""
    server = start_trickling_server(0.5, phase=phase)
    port = server.server.server_address[1]
    pool = _WatchedHTTPConnectionPool("127.0.0.1", port, timeout=30)
    deadline = Deadline(30)

    def call() -> None:
        with within(deadline), contextlib.suppress(Exception):  # any error, or a short body
            pool.urlopen("GET", "/", retries=False, preload_content=False).read()

    caller = threading.Thread(target=call, daemon=True)
    try:
        caller.start()
        time.sleep(0.5)
        deadline._cut_off()  # what the watchdog does when time is up
        caller.join(timeout=5)
        still_reading = caller.is_alive()
    finally:
        server.stop()  # ends the trickle, and with it a read the cut did not end
        caller.join(timeout=5)
        pool.close()
    assert deadline._connections, "the call never reached the server"
    assert not still_reading, (
        "a read went on 5 s after its deadline cut its sockets: urllib3 reads the answer "
        "from a socket other than the one `sock` held after HTTPConnection.request()"
    )


# -- broker.api.proxy ----------------------------------------------------------------------------


def test_urllib3_names_the_encodings_it_decodes():
    decoders = getattr(HTTPResponse, "CONTENT_DECODERS", None)
    assert decoders is not None and {"gzip", "deflate"} <= set(decoders), (
        "urllib3's HTTPResponse.CONTENT_DECODERS is gone or changed: broker.api.proxy reads it "
        "to know which encodings it can decode"
    )
