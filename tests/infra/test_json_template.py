"""JsonTemplate writes what json.dumps writes, on every fill."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from django.core.serializers.json import DjangoJSONEncoder

from broker.infra.json_template import JsonTemplate

OBJ = {
    "token": 'at-\u00e9"quoted"\n',
    "expires_in": None,
    "when": datetime(2026, 12, 3, tzinfo=UTC),
    "nested": {"expires_in": 5, "list": [1, "open:expires_in"]},
}


@pytest.mark.parametrize(
    "values",
    [
        {"expires_in": 3599, "event_id": "e-1"},
        {"expires_in": None, "event_id": 'a "quote", a \\ and \u2028'},
        {"expires_in": 0, "event_id": "open:event_id:not-the-marker"},
    ],
)
def test_every_fill_is_what_json_dumps_writes(values):
    template = JsonTemplate(OBJ, ("expires_in", "event_id"))
    expected = json.dumps({**OBJ, **values}, cls=DjangoJSONEncoder)
    for _ in range(3):  # the first writes it whole, the next ones from the parts
        assert template.fill(**values) == expected


def test_fills_of_other_values_do_not_leak_into_each_other():
    template = JsonTemplate(OBJ, ("expires_in",))
    written = [json.loads(template.fill(expires_in=n)) for n in (1, 2, 3)]
    assert [w["expires_in"] for w in written] == [1, 2, 3]
    assert all(w["nested"] == OBJ["nested"] for w in written)


def test_a_fill_must_give_exactly_the_open_values():
    template = JsonTemplate(OBJ, ("expires_in",))
    with pytest.raises(TypeError):
        template.fill()
    with pytest.raises(TypeError):
        template.fill(expires_in=1, token="other")
