"""Start the sandbox provider in a subprocess for tests (no pytest, no Django imports).

server = start_sandbox(tmp_path, broker_url="http://localhost:8000")
... server.url, server.providers_file, server.faults(mode="ratelimit", times=1) ...
server.stop()
"""

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests import processes

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MANAGE = PROJECT_ROOT / "sandbox" / "manage.py"
START_TIMEOUT_SECONDS = 30
REQUEST_TIMEOUT_SECONDS = 10


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class SandboxServer:
    url: str
    providers_file: Path
    process: subprocess.Popen
    log_file: Path
    sso_env_file: Path
    session: requests.Session = field(default_factory=requests.Session)

    def sso_settings(self) -> dict[str, str]:
        """The broker's BROKER_OIDC_* settings for the sandbox as its OIDC IdP."""
        lines = self.sso_env_file.read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line)

    def set_groups(self, username: str, groups: list[str]) -> dict[str, Any]:
        """The user's groups at the IdP, as in the next ID token's `groups` claim."""
        return self._post("/_sandbox/groups", {"username": username, "groups": groups})

    def _post(self, path: str, payload: dict | None = None) -> dict:
        response = self.session.post(
            f"{self.url}{path}", json=payload or {}, timeout=REQUEST_TIMEOUT_SECONDS
        )
        response.raise_for_status()
        return response.json()

    def _get(self, path: str, **params: str) -> dict:
        response = self.session.get(
            f"{self.url}{path}", params=params, timeout=REQUEST_TIMEOUT_SECONDS
        )
        response.raise_for_status()
        return response.json()

    def faults(
        self,
        mode: str = "none",
        delay: float = 0,
        retry_after: int = 1,
        times: int | None = None,
    ) -> dict:
        """Inject a token-endpoint fault: none, error500, slow or ratelimit."""
        payload = {
            "mode": mode,
            "delay": delay,
            "retry_after": retry_after,
            "times": times,
        }
        return self._post("/_sandbox/faults", payload)

    def counters(self) -> dict[str, Any]:
        return self._get("/_sandbox/counters")

    def reset_counters(self) -> dict[str, Any]:
        return self._post("/_sandbox/counters/reset")

    def revoke_user(self, username: str) -> dict[str, Any]:
        return self._post("/_sandbox/revoke-user", {"username": username})

    def expire_access_tokens(self, username: str) -> dict[str, Any]:
        return self._post("/_sandbox/expire-access-tokens", {"username": username})

    def api_token(self, username: str, days: int = 30) -> dict[str, str]:
        """A new Atlassian-like API token of `username`: `email`, `api_token`, `expires_on`."""
        return self._post("/_sandbox/api-tokens", {"username": username, "days": days})

    def tokens(self, username: str) -> dict[str, int]:
        return self._get("/_sandbox/tokens", username=username)

    def stop(self) -> None:
        self.session.close()
        processes.stop(self.process, timeout=10)


def sandbox_env(data_dir: Path, port: int, access_token_seconds: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "sandbox.settings",
            "SANDBOX_DATABASE_URL": f"sqlite:///{data_dir / 'sandbox.sqlite3'}",
            "SANDBOX_PUBLIC_URL": f"http://localhost:{port}",
            "SANDBOX_ACCESS_TOKEN_SECONDS": str(access_token_seconds),
            "SANDBOX_TEST_SWITCHES": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def mint_tokens(
    env: dict[str, str], out: Path, client_id: str, count: int, username: str = "alice"
) -> list[dict[str, Any]]:
    """`count` token pairs the sandbox (run with `env`) issues to `username` at once,
    without consent pages: what the benchmarks and the drills start from."""
    subprocess.run(
        [sys.executable, str(MANAGE), "sandbox_mint_tokens", "--client-id", client_id]
        + ["--username", username, "--count", str(count), "--out", str(out)],
        env=env,
        cwd=PROJECT_ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    minted: list[dict[str, Any]] = json.loads(out.read_text())
    return minted


def store_minted(grant: Any, token: dict[str, Any]) -> None:
    """Puts a minted token pair into `grant` (unsaved), as a consent would."""
    from broker.providers.oauth2_client import TokenResponse
    from broker.refresh.schedule import apply_token_response

    response = TokenResponse(
        token["access_token"],
        token["refresh_token"],
        token["expires_in"],
        token["scope"].split(),
        "Bearer",
    )
    apply_token_response(grant, response, refreshed=False)


def run_manage(args: list[str], env: dict[str, str], log_file: Path) -> None:
    with log_file.open("ab") as log:
        subprocess.run(
            [sys.executable, str(MANAGE), *args],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )


def wait_until_up(server: SandboxServer) -> None:
    try:
        processes.wait_until(
            # The home page: the test switches (/_sandbox/...) may be off (benchmarks).
            lambda: processes.answers(f"{server.url}/", timeout=1),
            START_TIMEOUT_SECONDS,
            "the sandbox to answer",
            process=server.process,
            log_file=server.log_file,
        )
    except processes.NotReady:
        server.stop()
        raise


def start_sandbox(data_dir: Path, broker_url: str, access_token_seconds: int = 2) -> SandboxServer:
    """Migrate a fresh per-run database, register the broker, and serve on a free port."""
    server = launch_sandbox(data_dir, broker_url, access_token_seconds)
    wait_until_up(server)
    return server


def launch_sandbox(data_dir: Path, broker_url: str, access_token_seconds: int) -> SandboxServer:
    """start_sandbox without the wait: the server's process is started, maybe not up yet."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = sandbox_env(data_dir, port, access_token_seconds)
    log_file = data_dir / "sandbox.log"
    providers_file = data_dir / "providers.toml"
    sso_env_file = data_dir / "sso.env"
    run_manage(["migrate", "--no-input", "-v", "0"], env, log_file)
    run_manage(
        [
            *("sandbox_setup", "--broker-url", broker_url, "--out", str(providers_file)),
            *("--sso-env", str(sso_env_file)),
        ],
        env,
        log_file,
    )
    process = processes.start(
        [sys.executable, str(MANAGE), "runserver", f"127.0.0.1:{port}", "--noreload"],
        log_file,
        env=env,
    )
    return SandboxServer(
        url=f"http://localhost:{port}",
        providers_file=providers_file,
        process=process,
        log_file=log_file,
        sso_env_file=sso_env_file,
    )
