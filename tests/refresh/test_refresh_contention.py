"""Single flight: many callers in many threads and processes, one upstream refresh."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from django.db import connections
from django.utils import timezone

from broker.refresh.on_demand import ensure_fresh
from tests.sandbox_grants import (
    PROJECT_ROOT,
    connect_grant,
    digest,
    refresh_count,
    subprocess_env,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.sandbox, pytest.mark.slow]

PROCESSES = 8
THREADS_PER_PROCESS = 5
LOCAL_THREADS = 10  # 8 x 5 + 10 = 50 callers


def test_fifty_concurrent_callers_share_one_upstream_refresh(sandbox, sandbox_apps, owner):
    grant = connect_grant(sandbox, owner)
    contenders = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.refresh_contender",
                str(grant.pk),
                str(THREADS_PER_PROCESS),
            ],
            cwd=PROJECT_ROOT,
            env=subprocess_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    results: list[dict] = []
    go = threading.Event()

    def contend() -> None:
        go.wait()
        try:
            fresh = ensure_fresh(grant.pk, min_ttl=1)
            results.append({"digest": digest(fresh.unseal("access_token"))})
        except Exception as exc:
            results.append({"error": f"{type(exc).__name__}: {exc}"})
        finally:
            connections.close_all()

    local = [threading.Thread(target=contend) for _ in range(LOCAL_THREADS)]
    try:
        for contender in contenders:
            assert contender.stdout.readline().strip() == "ready"
        for thread in local:
            thread.start()
        # The token has expired by now and the provider answers slowly: all overlap.
        remaining = (grant.access_expires_at - timezone.now()).total_seconds()
        time.sleep(max(0.0, remaining) + 0.1)
        sandbox.faults(mode="slow", delay=1.5)
        before = refresh_count(sandbox)
        for contender in contenders:
            contender.stdin.write("go\n")
            contender.stdin.flush()
        go.set()
        for contender in contenders:
            out, _ = contender.communicate(timeout=120)
            results.extend(json.loads(line) for line in out.splitlines() if line.strip())
        for thread in local:
            thread.join(timeout=60)
    finally:
        sandbox.faults(mode="none")
        for contender in contenders:
            if contender.poll() is None:
                contender.kill()

    assert len(results) == PROCESSES * THREADS_PER_PROCESS + LOCAL_THREADS
    assert [r for r in results if "error" in r] == []
    assert refresh_count(sandbox) - before == 1
    grant.refresh_from_db()
    assert {r["digest"] for r in results} == {digest(grant.unseal("access_token"))}
    assert grant.token_version == 2  # the code exchange, then exactly one refresh
