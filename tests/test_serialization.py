"""Celery's JSON through orjson reads and writes what kombu's own JSON does."""

from __future__ import annotations

import datetime
import decimal

import pytest
from kombu.utils import json as kombu_json

from eventpipeline.serialization import dumps, loads
from signals_app.messages import SignalRow

VALUES = [
    {"args": ["topic", [["id", 1, "click", 2, "{}", 0, 5]]], "kwargs": {}, "embed": {"callbacks": None}},
    {"when": datetime.datetime(2026, 1, 1, 12, 30, tzinfo=datetime.UTC), "day": datetime.date(2026, 1, 2)},
    {"amount": decimal.Decimal("1.50"), "raw": b"bytes", "nothing": None, "yes": True},
    {1: "int key", "big": 2**70},
    [[[[["nested"]]]]],
]


@pytest.mark.parametrize("value", VALUES)
def test_round_trip_matches_kombu(value: object) -> None:
    assert loads(dumps(value)) == kombu_json.loads(kombu_json.dumps(value))
    assert loads(kombu_json.dumps(value)) == kombu_json.loads(kombu_json.dumps(value))
    assert loads(dumps(value).encode()) == loads(dumps(value))


def test_a_signal_row_travels_as_an_array() -> None:
    row = SignalRow("id", 1, "click", 2, "{}", 0, 5)
    assert loads(dumps([row])) == [["id", 1, "click", 2, "{}", 0, 5]]
