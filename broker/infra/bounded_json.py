"""The one parser for JSON and JWTs that come from outside the broker, with bounds.

Request bodies, client assertions, subject tokens, ID tokens, identity providers' discovery
documents and key sets (JWKS), providers' answers: all are read here, never by `json.loads`
on the raw text. Python's parser recurses once per nested array or object, so 1,500 nested
`[` raise RecursionError (a 500) wherever the stack happens to be; here the nesting is
counted first, without recursion, and text nested deeper than MAX_DEPTH or larger than its
size limit is refused with `JsonRefused`, a ValueError like any other bad JSON, before the
standard parser sees it. The JWT libraries (joserfc, Authlib) parse a token's header and
claims again with `json.loads`: a token reaches them only after `unverified_jwt` read it.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
from typing import Any

# Nesting that real documents never approach (a JWKS with certificate chains is 3 deep, an
# API body 2) and Python's parser handles at any stack depth a request runs at.
MAX_DEPTH = 32
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024  # a provider's list of sites, a JWKS with many keys
# A compact JWS: an Entra ID token with its maximum of 200 group ids is about 10 KiB.
MAX_JWT_BYTES = 32 * 1024

# A string, from its opening quote to its closing one or, when it is never closed, to the
# end of the text: every match attempt succeeds, so the scan is linear (no retries from
# each quote of an unclosed string).
_STRING = re.compile(r'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


class JsonRefused(ValueError):
    """Not JSON (or not a JWT) the broker reads: malformed, too large or nested too deeply.
    The message completes "the body is ...", "the token is ..."; `too_large` tells a size
    refusal (an HTTP 413) from the others."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in `text`, counted without recursion. For text that
    is not JSON it may say more than a parser would reach, never less: the parser stops at
    the first error, and up to there it sees the same brackets outside the same strings."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if not brackets:
        return 0
    return max(itertools.accumulate(map(_DEPTH_STEP.__getitem__, brackets)))


def loads(data: str | bytes, *, max_bytes: int = MAX_DOCUMENT_BYTES) -> Any:
    """`json.loads(data)` for text from outside: raises JsonRefused (a ValueError) for text
    that is larger than `max_bytes`, nested deeper than MAX_DEPTH, or not JSON."""
    if len(data) > max_bytes:
        raise JsonRefused(f"larger than {max_bytes} bytes", too_large=True)
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode(json.detect_encoding(data), "surrogatepass")
        except UnicodeDecodeError:
            raise JsonRefused("not valid Unicode text") from None
    else:
        text = data
    if nesting_depth(text) > MAX_DEPTH:
        raise JsonRefused(f"nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(text)
    except ValueError:  # JSONDecodeError, and numbers too long to convert
        raise JsonRefused("not valid JSON") from None


def _segment(segment: str, name: str) -> dict[str, Any]:
    try:
        if not _BASE64URL.fullmatch(segment):
            raise JsonRefused("not base64url")
        try:
            raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        except (binascii.Error, ValueError):
            raise JsonRefused("not base64url") from None
        value = loads(raw)
        if not isinstance(value, dict):
            raise JsonRefused("not a JSON object")
    except JsonRefused as exc:
        raise JsonRefused(f"a JWT whose {name} is {exc}", too_large=exc.too_large) from None
    return value


def unverified_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS (RFC 7515 7.1), unverified: what a caller may
    read to find the key, the issuer or the client. Raises JsonRefused for anything else,
    a token over MAX_JWT_BYTES or nested deeper than MAX_DEPTH included."""
    if len(token) > MAX_JWT_BYTES:
        raise JsonRefused(f"larger than {MAX_JWT_BYTES} bytes", too_large=True)
    parts = token.split(".")
    if len(parts) != 3:
        raise JsonRefused("not a compact JWT (three dot-separated parts)")
    return _segment(parts[0], "header"), _segment(parts[1], "payload")
