"""Paths and methods of proxied calls: what the proxy forwards, and what a rule allows.

A proxied path is only ever appended to the app's API origin, so it must not be able to
leave it or climb above its path prefix, and the rule matcher must read it as the
provider's server will. Refused, before any rule is matched: dot segments (`.`, `..`, and
any segment of dots only), empty segments (`//`, which some servers and clients read as a
new authority), `;` path parameters (Tomcat, Jetty and Spring cut a segment at its `;`,
so Jira's Tomcat reads `..;` and `..;x=1` as `..`), backslashes (read as slashes by some
servers), `@`, percent signs left after decoding (double encoding: `%252e`), control,
format and separator characters (NUL, CR, LF, NEL, bidi overrides, zero-width spaces),
whitespace, and characters whose compatibility form (NFKC: fullwidth `．`, `／`, `；`)
is one of those. What a rule is matched against is exactly what is forwarded: the decoded
segments, each encoded again before sending.

Rule patterns (`proxy_paths`) are paths whose segments are literal, `*` (exactly one
segment) or `**` (any number of segments, none included), e.g. `/ex/jira/*/rest/api/3/**`.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence
from urllib.parse import quote

from django.core.exceptions import ValidationError

METHOD = re.compile(r"[A-Z]{1,16}")
# TRACE and TRACK echo the request, credentials included; CONNECT opens a tunnel that no
# rule can judge. Never forwarded, whatever a rule says, and no rule may name them.
NEVER_FORWARDED_METHODS = frozenset({"TRACE", "TRACK", "CONNECT"})
# Characters a segment may hold once decoded: no control characters or whitespace, none of
# the characters that change how a URL is split, no percent sign (double encoding), and no
# `;` (a path parameter, which servlet containers strip before they normalise the path).
FORBIDDEN_IN_SEGMENT = re.compile(r"[\x00-\x20\x7f\\/@%?#;]")
# Encoded in a request line, these would become separators, dot segments or path
# parameters once decoded.
ENCODED_TRICKS = re.compile(r"%(2f|5c|2e|25|40|3b)", re.IGNORECASE)
# Unicode categories refused outside ASCII: control, format (bidi overrides, zero-width
# characters), surrogates, private use, unassigned, and separators (NBSP, LINE SEPARATOR).
INVISIBLE_CATEGORIES = ("C", "Z")
# Characters sent as they are inside a segment (RFC 3986 pchar, minus the percent sign and
# `;`, which no forwarded segment holds).
SEGMENT_SAFE = "-._~!$&'()*+,=:"


class PathRefused(Exception):
    """The path cannot be forwarded; the message says why."""


def _segment_problem(segment: str) -> str | None:
    if not segment.strip("."):
        return "the path has an empty or dot segment ('//', '.', '..')"
    if ";" in segment:
        return "the path has a ';' path parameter, which the provider's server would strip"
    if FORBIDDEN_IN_SEGMENT.search(segment):
        return (
            "the path holds a character the proxy does not forward "
            "(control characters, spaces, \\, @, %, ? or #)"
        )
    if not segment.isascii() and any(
        unicodedata.category(char).startswith(INVISIBLE_CATEGORIES) for char in segment
    ):
        return "the path holds an invisible, control or separator character"
    return None


def segments_of(path: str) -> list[str]:
    """The segments of a decoded path (as Django routed it, without the leading slash)."""
    if not path:
        return []
    segments = path.split("/")
    for segment in segments:
        problem = _segment_problem(segment)
        if problem is None and not segment.isascii():
            # What a server that folds compatibility characters would read (`．．` is `..`).
            folded = unicodedata.normalize("NFKC", segment)
            if folded != segment and _segment_problem(folded):
                problem = "the path holds a character that stands for '.', '/', ';' or '\\'"
        if problem:
            raise PathRefused(problem)
    return segments


def check_raw_request_path(raw: str | None) -> None:
    """The request line as the client sent it, where the server passes it on (gunicorn's
    RAW_URI): an encoded slash, backslash, dot, percent or `@` is refused, because what it
    decodes to is not what the client appeared to ask for."""
    if raw and ENCODED_TRICKS.search(raw.split("?", 1)[0]):
        raise PathRefused("the path holds an encoded '/', '\\', '.', '%', '@' or ';'")


def encoded(segments: Sequence[str]) -> str:
    """The path to send, each segment percent-encoded again, with a leading slash."""
    return "/" + "/".join(quote(segment, safe=SEGMENT_SAFE) for segment in segments)


def _pattern_segments(pattern: str) -> list[str]:
    return [s for s in pattern.strip().strip("/").split("/") if s] if pattern.strip("/") else []


def matches(pattern: str, segments: Sequence[str]) -> bool:
    """Whether the path's segments match the pattern (`*` one segment, `**` any)."""
    wanted = _pattern_segments(pattern)

    # Remembered: with several `**`, the same (pattern, path) positions are tried again and
    # again, and a long path would take time growing as its length to the power of their
    # number.
    @functools.cache
    def match(p: int, s: int) -> bool:
        if p == len(wanted):
            return s == len(segments)
        if wanted[p] == "**":
            return any(match(p + 1, rest) for rest in range(s, len(segments) + 1))
        if s == len(segments):
            return False
        return (wanted[p] == "*" or wanted[p] == segments[s]) and match(p + 1, s + 1)

    return match(0, 0)


def allowed(
    methods: Iterable[str], patterns: Iterable[str], method: str, segments: Sequence[str]
) -> bool:
    """One rule's verdict: its methods (none: any) and its paths (none: any)."""
    methods, patterns = list(methods), list(patterns)
    if methods and method not in methods:
        return False
    return not patterns or any(matches(pattern, segments) for pattern in patterns)


def pattern_problem(pattern: object) -> str | None:
    """Why a proxy path pattern is unusable, or None."""
    if not isinstance(pattern, str) or not pattern.strip("/ "):
        return "a pattern is a non-empty path such as /rest/api/2/**"
    for segment in _pattern_segments(pattern):
        if segment in ("*", "**"):
            continue
        if "*" in segment:
            return f"{pattern!r}: '*' and '**' stand for whole segments"
        try:
            segments_of(segment)
        except PathRefused as exc:
            return f"{pattern!r}: {exc}"
    return None


def validate_proxy_paths(value: object) -> None:
    if not isinstance(value, list):
        raise ValidationError('Enter a list of path patterns, e.g. ["/rest/api/2/**"].')
    for pattern in value:
        if problem := pattern_problem(pattern):
            raise ValidationError(problem)


def method_problem(method: str) -> str | None:
    """Why a rule cannot name this method, or None."""
    if not METHOD.fullmatch(method):
        return f"{method!r} is not an upper-case HTTP method"
    if method in NEVER_FORWARDED_METHODS:
        return f"{method} is never forwarded by the proxy"
    return None


def validate_proxy_methods(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise ValidationError('Enter a list of upper-case HTTP methods, e.g. ["GET", "POST"].')
    for method in value:
        if problem := method_problem(method):
            raise ValidationError(f'{problem}; e.g. ["GET", "POST"].')
