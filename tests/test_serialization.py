"""Celery's JSON through orjson reads and writes what kombu's own JSON does."""

from __future__ import annotations

import datetime
import decimal
import importlib
from typing import Any

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


def test_the_redis_transport_writes_its_envelopes_with_orjson_as_kombu_would() -> None:
    import eventpipeline.celery  # noqa: F401 - the import makes the swap, as in every process

    kombu_redis: Any = importlib.import_module("kombu.transport.redis")  # its stubs lack dumps and loads

    assert kombu_redis.dumps is dumps and kombu_redis.loads is loads
    # A retried task's envelope: the body as JSON text (no base64), a datetime among the
    # headers, and a tuple (the time limits).
    envelope = {
        "body": dumps(VALUES[0]),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"eta": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC), "timelimit": (120, 100)},
        "properties": {"body_encoding": None, "delivery_info": {"exchange": "", "routing_key": "store"}},
    }
    expected = kombu_json.loads(kombu_json.dumps(envelope))
    assert kombu_json.loads(kombu_redis.dumps(envelope)) == expected
    assert kombu_redis.loads(kombu_json.dumps(envelope)) == expected
    assert kombu_redis.loads(kombu_redis.dumps(envelope))["headers"]["eta"] == envelope["headers"]["eta"]


def test_a_batch_task_request_decodes_the_body_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from kombu import Message

    from eventpipeline.celery import DecodedOnceRequest, app
    from signals_app.tasks import store_signals

    content_type = "application/json"
    decodes: list[object] = []

    def counting_loads(payload: str | bytes) -> object:
        decodes.append(payload)
        return loads(payload)

    registry: Any = importlib.import_module("kombu.serialization").registry
    monkeypatch.setitem(registry._decoders, content_type, counting_loads)
    body = [["signals", [["id", 1, "click", 2, "{}", 0, 5]]], {"batch_id": "b-1"}, {"callbacks": None}]
    headers = {"id": "task-1", "task": store_signals.name, "argsrepr": "", "kwargsrepr": ""}
    message = Message(body=dumps(body), content_type=content_type, content_encoding="utf-8", headers=headers)

    request = DecodedOnceRequest(message, app=app, task=store_signals)

    # Celery's pool runs the task from request.body, decoding it only if content_type is set.
    assert request.content_type is None
    assert list(request.body) == body
    assert request.args == body[0] and request.kwargs == body[1]
    assert len(decodes) == 1
