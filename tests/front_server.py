"""deploy/nginx.conf, the production front server's configuration, run as it is on loopback:
plain HTTP on a free port in front of a given gunicorn, with its pid, logs and temporary
files under a directory of its own, as a child process (not a daemon) stopped by its pid.
Used by the production smoke run, benchmarks/slow_clients.py and the tests. Plain Python,
like tests.processes."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests import processes

CONFIG = processes.PROJECT_ROOT / "deploy" / "nginx.conf"


class FrontServerUnavailable(RuntimeError):
    """nginx is not installed here."""


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)),
        None,
    )
    if found is None:
        raise FrontServerUnavailable("nginx is not installed (apt-get install nginx-light)")
    return found


def _replace(config: str, pattern: str, replacement: str, count: int = 1) -> str:
    """One rewrite of deploy/nginx.conf; a pattern that no longer matches what the file says
    fails loudly, so the file cannot drift away from what is tested."""
    rewritten, found = re.subn(pattern, replacement, config, flags=re.MULTILINE | re.DOTALL)
    if found != count:
        raise ValueError(f"deploy/nginx.conf: {pattern!r} found {found} times, not {count}")
    return rewritten


def relocated_config(prefix: Path, certificate: Path, key: Path) -> str:
    """deploy/nginx.conf as shipped (TLS, ports 80 and 443), only its files moved: pid, logs
    and temporary files under `prefix`, the given certificate. For `nginx -t`."""
    config = _relocate(CONFIG.read_text(), prefix)
    config = _replace(
        config, r"^        ssl_certificate \S+;", f"        ssl_certificate {certificate};"
    )
    return _replace(
        config, r"^        ssl_certificate_key \S+;", f"        ssl_certificate_key {key};"
    )


def _relocate(config: str, prefix: Path) -> str:
    # The user nginx's workers run as: this one's (no switch unless running as root).
    config = _replace(config, r"^user \S+;\n", "user root;\n" if os.getuid() == 0 else "")
    config = _replace(
        config,
        r"^worker_rlimit_nofile \d+;",
        f"worker_rlimit_nofile {resource.getrlimit(resource.RLIMIT_NOFILE)[0]};",
    )
    config = _replace(config, r"^pid \S+;", f"pid {prefix}/nginx.pid;")
    config = _replace(config, r"^error_log \S+", f"error_log {prefix}/error.log")
    config = _replace(config, r"^    access_log \S+;", f"    access_log {prefix}/access.log;")
    return _replace(
        config,
        r"^http \{\n",
        f"http {{\n    client_body_temp_path {prefix}/client_body;\n"
        f"    proxy_temp_path {prefix}/proxy;\n",
    )


def loopback_config(port: int, upstream: str, prefix: Path, address: str = "127.0.0.1") -> str:
    """deploy/nginx.conf listening on `address`:`port` (plain HTTP, no redirect server),
    passing to `upstream` (host:port), its files under `prefix`; everything else as is."""
    config = _relocate(CONFIG.read_text(), prefix)
    config = _replace(config, r"^        server 127\.0\.0\.1:8000;", f"        server {upstream};")
    # The port-80 server only redirects to HTTPS.
    config = _replace(config, r"^    server \{\n        listen 80 .*?^    \}\n\n", "")
    config = _replace(
        config,
        r"^        listen 443 ssl http2 default_server;",
        f"        listen {address}:{port};",
    )
    config = _replace(config, r"^        listen \[::\]:443 .*?\n", "")
    return _replace(config, r"^        ssl_\w+ [^\n]*\n", "", count=4)


def check(conf: Path, prefix: Path, wrapper: Sequence[str] = ()) -> None:
    """`nginx -t` on `conf` (it binds the addresses it listens on, so `wrapper` must put it
    where they are); RuntimeError with nginx's complaint if it refuses it."""
    tested = subprocess.run(
        [*wrapper, nginx_binary(), "-p", str(prefix), "-c", str(conf)]
        + ["-e", str(prefix / "error.log"), "-t", "-q"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if tested.returncode != 0:
        raise RuntimeError(f"nginx refused {conf}: {tested.stderr.strip()}")


def start(
    port: int,
    upstream: str,
    prefix: Path,
    *,
    address: str = "127.0.0.1",
    wrapper: Sequence[str] = (),
    own_session: bool = False,
) -> subprocess.Popen[bytes]:
    """nginx in the foreground (`daemon off`) with loopback_config, once `nginx -t` accepted
    it; the caller waits until it answers. Its output goes to prefix/nginx.log. `wrapper`
    goes before the command (the drills' `ip netns exec NAME`)."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(loopback_config(port, upstream, prefix, address))
    check(conf, prefix, wrapper)
    command = [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    return processes.start(
        [*wrapper, *command, "-g", "daemon off;"], prefix / "nginx.log", own_session=own_session
    )
