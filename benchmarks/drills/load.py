"""The load: services fetching provider tokens for the seeded grants through both web hosts.

Threads, each with its own HTTP sessions, pick a grant at random and a web host in turn and
POST /api/v1/access-token; every answer is recorded (when sent and answered, which host,
which grant, the status and its kind, a digest of the token served) for the invariants.
The rate is bounded (requests per second over all threads), and so is the total.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from dataclasses import dataclass

import requests

REQUEST_TIMEOUT = 35  # above the broker's longest wait (2 x 10 s for another refresh)
# Broker tokens last BROKER_API_TOKEN_SECONDS (300 s): renewed before, as a service should.
BROKER_TOKEN_RENEW_SECONDS = 240


@dataclass(frozen=True)
class Result:
    sent: float  # epoch seconds
    done: float
    host: str
    grant: str
    status: int  # 0: no HTTP answer
    kind: str
    digest: str = ""


def classify(response: requests.Response) -> str:
    status = response.status_code
    if status == 200:
        return "ok"
    is_json = response.headers.get("Content-Type", "").startswith("application/json")
    if status == 503 and is_json and response.headers.get("Retry-After"):
        return "503-retry-after"
    if status >= 500:
        return f"bad-{status}{'' if is_json else '-html'}"
    if is_json:
        try:
            return f"{status}-{response.json().get('error', '')}"
        except ValueError:
            pass
    return str(status)


class Load:
    def __init__(
        self,
        web_urls: dict[str, str],
        grants: list[str],
        client_id: str,
        client_secret: str,
        *,
        threads: int,
        rate: float,
    ) -> None:
        self.web_urls = web_urls
        self.grants = grants
        self.credentials = (client_id, client_secret)
        self.threads = threads
        self.interval = threads / rate
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._token = ""
        self._token_at = 0.0
        self._token_lock = threading.Lock()

    def broker_token(self, session: requests.Session, stale: str = "") -> str:
        """A broker token for the service (one shared by all threads, renewed on 401)."""
        with self._token_lock:
            fresh = time.monotonic() - self._token_at < BROKER_TOKEN_RENEW_SECONDS
            if self._token and self._token != stale and fresh:
                return self._token
            for url in list(self.web_urls.values()) * 10:
                try:
                    response = session.post(
                        f"{url}/api/v1/oauth/token",
                        data={"grant_type": "client_credentials"},
                        auth=self.credentials,
                        timeout=10,
                    )
                except requests.RequestException:
                    time.sleep(0.5)
                    continue
                if response.status_code == 200:
                    self._token = response.json()["access_token"]
                    self._token_at = time.monotonic()
                    return self._token
                time.sleep(0.5)
            return self._token

    def start(self) -> None:
        self._stop.clear()
        self._workers = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()

    def stop(self) -> None:
        """No new request is sent; returns when every request in flight is answered."""
        self._stop.set()
        for worker in self._workers:
            worker.join(REQUEST_TIMEOUT + 5)

    def _run(self, number: int) -> None:
        sessions = {host: requests.Session() for host in self.web_urls}
        hosts = list(self.web_urls)
        turn = number
        pick = random.Random(number)
        token = self.broker_token(sessions[hosts[0]])
        next_at = time.monotonic() + pick.random() * self.interval
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            next_at = max(next_at + self.interval, time.monotonic())
            turn += 1
            host = hosts[turn % len(hosts)]
            token = self.broker_token(sessions[host], stale="")
            grant = pick.choice(self.grants)
            result, token = self._one(sessions[host], host, grant, token)
            with self._lock:
                self.results.append(result)

    def ask(self, grant: str) -> None:
        """One request for `grant` besides the load's (recorded with them)."""
        host = next(iter(self.web_urls))
        with requests.Session() as session:
            result, _ = self._one(session, host, grant, self.broker_token(session))
        with self._lock:
            self.results.append(result)

    def _one(
        self, session: requests.Session, host: str, grant: str, token: str
    ) -> tuple[Result, str]:
        sent = time.time()
        try:
            response = session.post(
                f"{self.web_urls[host]}/api/v1/access-token",
                json={"grant": grant, "min_ttl": 5},
                headers={"Authorization": f"Bearer {token}"},
                timeout=REQUEST_TIMEOUT,
            )
        except requests.RequestException as exc:
            session.close()  # a dead host's pooled connections are useless
            kind = "timeout" if isinstance(exc, requests.Timeout) else "connection"
            return Result(sent, time.time(), host, grant, 0, kind), token
        done = time.time()
        if response.status_code == 401:
            token = self.broker_token(session, stale=token)
        kind = classify(response)
        digest = ""
        if kind == "ok":
            digest = hashlib.sha256(response.json()["access_token"].encode()).hexdigest()
        return Result(sent, done, host, grant, response.status_code, kind, digest), token

    def since(self, started: float) -> list[Result]:
        with self._lock:
            return [r for r in self.results if r.sent >= started]
