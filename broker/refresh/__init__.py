"""Keeping grants' access tokens fresh, one module per concern.

- `on_demand.ensure_fresh`: the API's path, for a token that must last `min_ttl` seconds.
- `claims`: the beat claims due grants; the worker refreshes a claimed one
  (`refresh_grant_now`, run by `tasks.refresh_grant`).
- `single_flight`: the one section that calls the provider for a stored grant, and the
  fenced writes of its result (refreshed, failed, reconnect required).
- `lock`: the grant's Redis lock, and waiting for another process's refresh.
- `doubt_marks`: the rescued response and the in-flight mark (tokens that may be retired).
- `timing`: lock, wait, claim and backoff times from the settings, and their checks.
- `redis_keys`, `grant_statements`, `schedule`: keys, database statements, next refresh time.
- `tasks`, `api_token_expiry`: Celery tasks.
"""
