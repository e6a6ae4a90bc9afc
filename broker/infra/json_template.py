"""A JSON object written once with a few of its values left open, then completed per use.

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
    """`json.dumps(obj, cls=DjangoJSONEncoder)` with the top-level values of `open_keys`
    given by `fill(**values)`: plain JSON values (text, numbers, None)."""

    def __init__(self, obj: Mapping[str, Any], open_keys: Sequence[str]) -> None:
        # Markers no value can contain by chance: random, and written as JSON strings.
        markers = {key: f"open:{key}:{secrets.token_hex(16)}" for key in open_keys}
        text = json.dumps({**obj, **markers}, cls=DjangoJSONEncoder)
        spans = sorted(
            (text.index(json.dumps(marker)), len(json.dumps(marker)), key)
            for key, marker in markers.items()
        )
        self._keys = tuple(key for _, _, key in spans)
        self._parts: list[str] = []
        start = 0
        for at, length, _ in spans:
            self._parts.append(text[start:at])
            start = at + length
        self._parts.append(text[start:])

    def fill(self, **values: Any) -> str:
        if values.keys() != set(self._keys):
            raise TypeError(f"fill takes exactly {', '.join(self._keys)}")
        pieces = [self._parts[0]]
        for key, part in zip(self._keys, self._parts[1:], strict=True):
            pieces.append(json.dumps(values[key]))
            pieces.append(part)
        return "".join(pieces)
