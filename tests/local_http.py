"""A tiny HTTP server in a thread that records every request (fake provider or receiver)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class LocalServer:
    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    # Status codes and JSON bodies to answer with, in order; when empty, 200 and {}.
    statuses: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    # JSON documents answered to GET, by path (query ignored); other paths get 404.
    documents: dict[str, bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_local_server() -> LocalServer:
    holder: dict[str, LocalServer] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            state = holder["state"]
            with state.lock:
                state.requests.append(
                    Received(
                        "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body
                    )
                )
                status = state.statuses.pop(0) if state.statuses else 200
                answer = state.bodies.pop(0) if state.bodies else b"{}"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def do_GET(self) -> None:
            state = holder["state"]
            path = self.path.split("?", 1)[0]
            with state.lock:
                state.requests.append(
                    Received("GET", self.path, {k.lower(): v for k, v in self.headers.items()}, b"")
                )
                answer = state.documents.get(path)
            self.send_response(404 if answer is None else 200)
            answer = answer or b"{}"
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder["state"] = LocalServer(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return holder["state"]


# A token response, so that a client patient enough would get a well-formed answer.
TRICKLED_BODY = (
    b'{"access_token":"trickled-access","token_type":"Bearer","expires_in":3600,'
    b'"refresh_token":"trickled-refresh","scope":"read"}'
)


@dataclass
class TricklingServer:
    """Answers every request one byte every `interval` seconds: from the status line on
    (phase "headers"), or with the headers at once and the body trickled (phase "body")."""

    server: ThreadingHTTPServer
    interval: float
    phase: str
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


def start_trickling_server(interval: float, *, phase: str = "headers") -> TricklingServer:
    holder: dict[str, TricklingServer] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self) -> None:
            state = holder["state"]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            with state.lock:
                state.requests.append(Received(self.command, self.path, headers, body))
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(TRICKLED_BODY)}\r\nConnection: close\r\n\r\n"
            ).encode()
            try:
                if state.phase == "body":
                    self.wfile.write(head)
                    self.wfile.flush()
                    head = b""
                for byte in head + TRICKLED_BODY:
                    if state.stopping.wait(state.interval):
                        break
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            except OSError:
                pass  # the client gave up: what a deadline is for
            self.close_connection = True

        do_GET = answer
        do_POST = answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    holder["state"] = TricklingServer(server, interval, phase)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return holder["state"]
