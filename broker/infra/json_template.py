"""A JSON object whose other values stay the same while a few of them change per use.

The warm path (broker.api.warm_path) sends the same answer and records the same audit event
for every request that repeats it; only a few values are new each time (the seconds a
token has left, an event's id, time and client address). Writing the whole object again
for each request cost more than the rest of such an answer.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder


class JsonTemplate:
    """`json.dumps({**obj, **values}, cls=DjangoJSONEncoder)` for `fill(**values)`, where
    `values` are the top-level keys `open_keys`, given as plain JSON values (text, numbers,
    None). The first fill writes the whole object; from the second on, only the values are
    written, between the parts of the object written once (most objects are filled once:
    they do not pay for the split)."""

    def __init__(self, obj: Mapping[str, Any], open_keys: Sequence[str]) -> None:
        self._obj = obj
        self._open_keys = frozenset(open_keys)
        self._filled = False
        self._split: tuple[tuple[str, ...], tuple[str, ...]] | None = None

    def fill(self, **values: Any) -> str:
        if values.keys() != self._open_keys:
            raise TypeError(f"fill takes exactly {', '.join(sorted(self._open_keys))}")
        if self._split is None:
            if not self._filled:
                self._filled = True
                return json.dumps({**self._obj, **values}, cls=DjangoJSONEncoder)
            self._split = self._written_apart()
        keys, parts = self._split
        pieces = [parts[0]]
        for key, part in zip(keys, parts[1:], strict=True):
            pieces.append(json.dumps(values[key]))
            pieces.append(part)
        return "".join(pieces)

    def _written_apart(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(the open keys in the order written, the text around their values)."""
        # Markers no value can contain by chance (random), each written as a JSON string.
        salt = secrets.token_hex(16)
        markers = {key: f"open:{key}:{salt}" for key in self._open_keys}
        text = json.dumps({**self._obj, **markers}, cls=DjangoJSONEncoder)
        written = ((json.dumps(marker), key) for key, marker in markers.items())
        spans = sorted((text.index(marker), len(marker), key) for marker, key in written)
        parts, start = [], 0
        for at, length, _ in spans:
            parts.append(text[start:at])
            start = at + length
        parts.append(text[start:])
        return tuple(key for _, _, key in spans), tuple(parts)
