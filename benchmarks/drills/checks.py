"""The invariants, checked after each drill against the sandbox's own records and the
broker's database, and the figures table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import requests

from benchmarks.drills.load import Result

# Answers that describe a grant's state, not a failure of the broker.
GRANT_STATE_KINDS = {"404-not_found", "409-reconnect_required"}


@dataclass
class Figures:
    drill: str
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    recovery: str = ""
    lost_grants: int = 0
    refresh_twice: int = 0  # outside the provider's reuse window
    refresh_again_in_window: int = 0
    stale_served: int = 0
    served_after_revocation: int = 0
    audit_lost: int = 0
    bad_5xx: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not (
            self.lost_grants
            or self.refresh_twice
            or self.stale_served
            or self.served_after_revocation
            or self.audit_lost
            or self.bad_5xx
            or self.recovery.startswith(">")
        )


def recovery_time(results: list[Result], fault_end: float, window_end: float) -> str:
    """Seconds from the fault's end to the last failed request sent after it."""
    failed = [
        r.sent
        for r in results
        if r.sent >= fault_end and r.kind != "ok" and r.kind not in GRANT_STATE_KINDS
    ]
    if not failed:
        return "0.0 s"
    last = max(failed)
    if window_end - last < 3:
        return f"> {window_end - fault_end:.0f} s"
    return f"{last - fault_end:.1f} s"


def token_history(sandbox_url: str, digests: list[str]) -> dict:
    merged: dict = {"live": {}, "retired": {}}
    for start in range(0, max(len(digests), 1), 400):
        response = requests.post(
            f"{sandbox_url}/_sandbox/token-history",
            json={"access_tokens": digests[start : start + 400]},
            timeout=30,
        )
        response.raise_for_status()
        data = response.json()
        merged["live"].update(data["live"])
        merged["retired"].update(data["retired"])
        merged["refresh_tokens_presented"] = data["refresh_tokens_presented"]
        merged["refresh_tokens_presented_twice"] = data["refresh_tokens_presented_twice"]
        merged["refresh_tokens_reused_outside_window"] = data[
            "refresh_tokens_reused_outside_window"
        ]
        merged["reuse_window_seconds"] = data["reuse_window_seconds"]
    return merged


def stale_tokens(results: list[Result], history: dict) -> tuple[list[str], int]:
    """(evidence for each token served after the provider had retired or expired it,
    how many served tokens the provider does not know)."""
    stale, unknown = [], 0
    for result in results:
        if result.kind != "ok":
            continue
        sent_ms = result.sent * 1000
        retired = history["retired"].get(result.digest)
        expires = history["live"].get(result.digest)
        if retired is None and expires is None:
            unknown += 1
        elif retired is not None and retired < sent_ms:
            stale.append(
                f"grant {result.grant} via {result.host}: asked {sent_ms - retired:.0f} ms "
                f"after the provider retired the token (answered in "
                f"{(result.done - result.sent) * 1000:.0f} ms)"
            )
        elif expires is not None and expires < sent_ms:
            stale.append(f"grant {result.grant}: asked {sent_ms - expires:.0f} ms after expiry")
    return stale, unknown


def print_table(rows: list[Figures]) -> None:
    header = (
        "drill",
        "requests",
        "errors by kind",
        "recovery",
        "lost grants",
        "refresh x2 late",
        "stale served",
        "after revoke",
        "audit lost",
        "bad 5xx",
        "result",
    )
    lines = [header]
    for row in rows:
        errors = ", ".join(f"{kind} {count}" for kind, count in sorted(row.errors.items()))
        lines.append(
            (
                row.drill,
                str(row.requests),
                errors or "-",
                row.recovery,
                str(row.lost_grants),
                str(row.refresh_twice)
                + (
                    f" ({row.refresh_again_in_window} in window)"
                    if row.refresh_again_in_window
                    else ""
                ),
                str(row.stale_served),
                str(row.served_after_revocation),
                str(row.audit_lost),
                str(row.bad_5xx),
                "PASS" if row.passed else "FAIL",
            )
        )
    print("| " + " | ".join(lines[0]) + " |")
    print("|" + "---|" * len(header))
    for line in lines[1:]:
        print("| " + " | ".join(line) + " |")
    for row in rows:
        for note in row.notes:
            print(f"  {row.drill}: {note}")
