"""The filters IdPs send (RFC 7644 3.4.2.2), read into equality tests: `userName eq "x"`
(Okta, Entra ID before creating a user), `displayName eq "x"`, `externalId eq "x"`, and
Entra ID's membership check `id eq "g" and members eq "u"`. Attribute names and operators
are case-insensitive; any other operator or shape is refused with `invalidFilter`, so an
unsupported filter is never read as "everything"."""

from __future__ import annotations

import json
import re

from accounts.scim.errors import ScimError
from accounts.scim.resources import storable

MAX_FILTER_LENGTH = 1000

_COMPARISON = re.compile(
    r'\s*([A-Za-z][\w.:$-]*)\s+(eq)\s+("(?:[^"\\]|\\.)*"|true|false)\s*', re.IGNORECASE
)
_AND = re.compile(r"and\b", re.IGNORECASE)


def equalities(text: str, allowed: set[str]) -> list[tuple[str, str | bool]]:
    """`[(attribute in lower case, value), ...]`, all of which must hold, for a filter of
    `eq` comparisons joined by `and` on attributes in `allowed` (lower case). Raises
    ScimError(400, invalidFilter)."""
    if len(text) > MAX_FILTER_LENGTH:
        raise ScimError(400, "The filter is too long.", "invalidFilter")
    tests: list[tuple[str, str | bool]] = []
    position = 0
    while True:
        match = _COMPARISON.match(text, position)
        if match is None:
            raise ScimError(
                400,
                'Only `attribute eq "value"` comparisons joined by `and` are supported.',
                "invalidFilter",
            )
        attribute = match.group(1).lower()
        if attribute not in allowed:
            raise ScimError(400, f"Cannot filter on {match.group(1)[:60]!r}.", "invalidFilter")
        raw = match.group(3)
        try:
            value: str | bool = json.loads(raw) if raw.startswith('"') else raw.lower() == "true"
        except ValueError:
            raise ScimError(400, "A filter value is not a valid string.", "invalidFilter") from None
        if isinstance(value, str) and ("\x00" in value or not storable(value)):
            raise ScimError(400, "A filter value is not a valid string.", "invalidFilter")
        tests.append((attribute, value))
        position = match.end()
        if position == len(text):
            return tests
        joined = _AND.match(text, position)
        if joined is None:
            raise ScimError(400, "Comparisons must be joined by `and`.", "invalidFilter")
        position = joined.end()
