"""A tiny HTTP server in a thread that records every request (fake provider or receiver),
one that trickles its answers, and a self-signed certificate to serve either over TLS."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


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


def self_signed_certificate(directory: Path, name: str) -> tuple[str, str]:
    """A certificate for `name` only (a DNS name, or an IP address), signed by its own key
    and valid for an hour: its PEM files written in `directory`, (certificate, key). It is
    its own CA, so a client trusts it by that one file (`verify=`, `cafile=`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    try:
        alt_name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        alt_name = x509.DNSName(name)
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


def serve_tls(server: ThreadingHTTPServer, certificate: tuple[str, str]) -> None:
    """Makes `server` (not yet answering) answer over TLS with `certificate`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server.socket = context.wrap_socket(server.socket, server_side=True)
