"""A minimal SMTP server in a thread, on loopback, that keeps every message it accepted.

Enough of RFC 5321 for smtplib's `sendmail` (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT).
`hang_up_first=n` closes the first n connections before the greeting: to the sender, a mail
server that went away (smtplib raises SMTPServerDisconnected). Starting it later on a port
chosen in advance (`start_smtp_server(port=...)`) gives a server that refused connections
(ConnectionRefusedError) until then.
"""

from __future__ import annotations

import socketserver
import threading
from dataclasses import dataclass, field


@dataclass
class Message:
    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class SmtpServer:
    server: socketserver.ThreadingTCPServer
    hang_up_first: int = 0
    connections: int = 0
    messages: list[Message] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def start_smtp_server(*, port: int = 0, hang_up_first: int = 0) -> SmtpServer:
    holder: dict[str, SmtpServer] = {}

    class Handler(socketserver.StreamRequestHandler):
        timeout = 10

        def reply(self, line: str) -> None:
            self.wfile.write(line.encode() + b"\r\n")
            self.wfile.flush()

        def handle(self) -> None:
            state = holder["state"]
            with state.lock:
                state.connections += 1
                if state.connections <= state.hang_up_first:
                    return  # closed before the greeting
            self.reply("220 localhost test SMTP")
            sender, recipients = "", []
            while line := self.rfile.readline():
                verb = line[:4].decode("ascii", "replace").upper()
                if verb in ("EHLO", "HELO"):
                    self.reply("250 localhost")
                elif verb == "MAIL":
                    sender, recipients = line.decode().split(":", 1)[1].strip(), []
                    self.reply("250 OK")
                elif verb == "RCPT":
                    recipients.append(line.decode().split(":", 1)[1].strip())
                    self.reply("250 OK")
                elif verb == "DATA":
                    self.reply("354 end with <CRLF>.<CRLF>")
                    data = b""
                    while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                        data += chunk
                    with state.lock:
                        state.messages.append(Message(sender, recipients, data))
                    self.reply("250 OK queued")
                elif verb in ("RSET", "NOOP"):
                    self.reply("250 OK")
                elif verb == "QUIT":
                    self.reply("221 bye")
                    return
                else:
                    self.reply("502 not implemented")

    server = _Server(("127.0.0.1", port), Handler)
    state = SmtpServer(server, hang_up_first=hang_up_first)
    holder["state"] = state
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return state
