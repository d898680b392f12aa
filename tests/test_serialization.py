"""Celery's JSON through orjson reads and writes what kombu's own JSON does."""

from __future__ import annotations

import datetime
import decimal
import importlib
import uuid
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
    # An envelope with what it must carry: the body as JSON text (no base64), a datetime
    # among the headers (kombu marks it), and a tuple (the time limits).
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


def test_what_orjson_refuses_is_read_as_kombu_reads_it() -> None:
    written_elsewhere = '{"x": NaN, "y": "\\ud800"}'  # the standard library writes both
    assert repr(loads(written_elsewhere)) == repr(kombu_json.loads(written_elsewhere))


def test_the_batch_tasks_decode_each_body_once_from_arrival_to_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.app.trace import trace_task_ret
    from kombu import Message
    from kombu.utils.imports import symbol_by_name

    from anomalies_app.tasks import detect_anomalies
    from eventpipeline.celery import BatchTask, DecodedOnceRequest, app
    from signals_app.tasks import store_signals

    for task in (store_signals, detect_anomalies):
        assert symbol_by_name(task.Request) is DecodedOnceRequest

    content_type = "application/json"
    decodes: list[object] = []

    def counting_loads(payload: str | bytes) -> object:
        decodes.append(payload)
        return loads(payload)

    registry: Any = importlib.import_module("kombu.serialization").registry
    monkeypatch.setitem(registry._decoders, content_type, counting_loads)
    received: list[tuple[str, object, object]] = []

    @app.task(base=BatchTask, name=f"tests.batch_{uuid.uuid4().hex}", ignore_result=True)
    def batch(topic: str, rows: object, batch_id: str | None = None) -> None:
        received.append((topic, rows, batch_id))

    try:
        body = [["signals", [["id", 1, "click", 2, "{}", 0, 5]]], {"batch_id": "b-1"}, {"callbacks": None}]
        headers = {"id": "task-1", "task": batch.name, "argsrepr": "", "kwargsrepr": ""}
        message = Message(body=dumps(body), content_type=content_type, content_encoding="utf-8", headers=headers)

        # What a worker does: the request when the message arrives, then the pool's trace.
        request = symbol_by_name(batch.Request)(message, app=app, task=batch)
        trace_task_ret(
            batch.name,
            request.id,
            request.request_dict,
            request.body,
            request.content_type,
            request.content_encoding,
            app=app,
        )
    finally:
        app.tasks.unregister(batch.name)

    assert received == [("signals", [["id", 1, "click", 2, "{}", 0, 5]], "b-1")]
    assert len(decodes) == 1
