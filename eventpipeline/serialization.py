"""Kombu's JSON serializer, backed by orjson.

The wire format does not change: content type "application/json", and kombu's
{"__type__": ..., "__value__": ...} markers for datetimes, decimals and bytes, so any
Celery client or Flower reads these messages (a UUID object arrives as its string).
It uses orjson because every batch is decoded by a worker, where the standard library's
decoder took a large share of the CPU (docs/performance.md, "JSON in Celery and the bridge").
"""

from __future__ import annotations

from typing import Any

import orjson
from kombu.serialization import register
from kombu.utils import json as kombu_json

_kombu_encoder = kombu_json.JSONEncoder()
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, tuple):  # a NamedTuple such as SignalRow travels as an array
        return list(value)
    return _kombu_encoder.default(value)


def dumps(value: Any) -> str:
    # Datetimes go through kombu's encoder, which marks them so that they load as datetimes.
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS).decode()
    except TypeError:
        # What orjson refuses (integers beyond 64 bits, nesting beyond 255) kombu may take.
        return str(kombu_json.dumps(value))


def loads(payload: str | bytes | bytearray | memoryview) -> Any:
    if isinstance(payload, memoryview | bytearray):
        payload = bytes(payload)
    marker: str | bytes = '"__type__"' if isinstance(payload, str) else b'"__type__"'
    if marker in payload:  # type: ignore[operator]
        # Only kombu's own decoder turns its markers back into objects.
        return kombu_json.loads(payload)
    return orjson.loads(payload)


def register_orjson_for_json() -> None:
    register("json", dumps, loads, content_type="application/json", content_encoding="utf-8")
