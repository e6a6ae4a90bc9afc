"""A separate process racing for one grant's token: `python -m tests.refresh_contender
GRANT_ID THREADS [MIN_TTL]`. Sets Django up (the test's DATABASE_URL and REDIS_URL come in
the environment), prints "ready", waits for a line on stdin, then calls ensure_fresh from
THREADS threads at once and prints one JSON line per call (a digest, never the token)."""

import json
import os
import sys
import threading

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


def main() -> None:
    import django

    django.setup()
    from django.db import connections

    from broker.refresh.on_demand import ensure_fresh
    from tests.sandbox_grants import digest

    grant_id, threads = sys.argv[1], int(sys.argv[2])
    min_ttl = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    lines: list[str] = []
    start = threading.Barrier(threads)

    def contend() -> None:
        start.wait()
        try:
            grant = ensure_fresh(grant_id, min_ttl=min_ttl)
            result = {"digest": digest(grant.unseal("access_token")), "pid": os.getpid()}
        except Exception as exc:  # reported to the test, which fails on it
            result = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            connections.close_all()
        lines.append(json.dumps(result))

    workers = [threading.Thread(target=contend) for _ in range(threads)]
    print("ready", flush=True)
    sys.stdin.readline()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
