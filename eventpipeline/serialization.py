"""Kombu's JSON, backed by orjson: the serializer of task bodies, and the envelope the
Redis transport wraps around each message.

The wire format does not change: content type "application/json", and kombu's
{"__type__": ..., "__value__": ...} markers for datetimes, decimals and bytes, so any
Celery client or Flower reads these messages (a UUID object arrives as its string).
It uses orjson because every batch is decoded by a worker, where the standard library's
decoder took a large share of the CPU (docs/performance.md, "JSON in Celery and the bridge"),
and because kombu's Redis transport encodes each message's envelope, the batch inside it,
twice: once to send it, and once more when a worker takes it, to keep it among the
unacknowledged (docs/performance.md, "Celery's envelope").
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
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        # What orjson refuses and the standard library reads (NaN, a lone surrogate): a
        # message written by another client must not be lost for it.
        return kombu_json.loads(payload)


def register_orjson_for_json() -> None:
    register("json", dumps, loads, content_type="application/json", content_encoding="utf-8")


def use_orjson_for_redis_envelopes() -> None:
    """kombu's Redis transport encodes and decodes its envelopes with `kombu.utils.json`,
    the standard library's JSON, which it imports by name: the names are swapped here for
    the functions above, which write and read the same text."""
    from kombu.transport import redis as kombu_redis

    kombu_redis.dumps = dumps  # type: ignore[attr-defined]  # not in the stubs
    kombu_redis.loads = loads  # type: ignore[attr-defined]
