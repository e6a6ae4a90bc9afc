"""Text from outside that the database is asked to compare: names, ids, slugs."""

from __future__ import annotations


def is_text(value: str) -> bool:
    """False for a string JSON can carry but UTF-8 cannot (a lone surrogate, "\\ud800"):
    no database can store or compare it."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def matchable(*values: str) -> bool:
    """False when a value holds NUL or is not valid text: no username, slug, id or key name
    does, and databases refuse to compare it (PostgreSQL any NUL, every database a lone
    surrogate), so such a lookup finds nothing without asking the database."""
    return all("\x00" not in value and is_text(value) for value in values)
