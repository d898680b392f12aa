"""Decoding and validating a signal message from Kafka: pure functions, no I/O.

`decode_signal` turns one Kafka record into either a `SignalRow` (the accepted event, in
the compact form Celery carries to the store task) or a `Rejection` whose reason names the
field and the problem, in words an operator can act on. Nothing here raises for bad input.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

# A derived event identity: the same Kafka record always maps to the same UUID.
EVENT_ID_NAMESPACE = uuid.UUID("6f2a7f4e-4c1b-4a49-9d0e-3c1f3b8e5a10")

# The form producers almost always send; matching it is much cheaper than parsing.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")

BIGINT_MAX = 2**63 - 1
# orjson reads JSON nested up to 1024 levels but writes only up to this many.
MAX_NESTING = 255
# Timestamps below this are almost certainly seconds, not milliseconds (it is 1973-03-03
# in milliseconds, and year 5138 in seconds).
SECONDS_NOT_MS_BELOW = 100_000_000_000

_STR = (str,)
_NUMBER = (int, float)
# Per type: required payload keys and the JSON types they must have. Extra keys are kept.
PAYLOAD_SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "login": {"login_method": _STR, "success": (bool,), "location": _STR, "ip_address": _STR},
    "purchase": {"amount": _NUMBER, "currency": _STR, "product_id": (str, int), "payment_method": _STR},
    "click": {"page": _STR, "element": _STR},
    "api_call": {"endpoint": _STR, "method": _STR, "status_code": (int,), "response_time_ms": _NUMBER},
    "file_access": {"path": _STR, "action": _STR},
}
SIGNAL_TYPES = tuple(PAYLOAD_SCHEMA)

_JSON_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}

# PAYLOAD_SCHEMA as the decoder checks it: per type, (key, the exact types allowed, their
# names for a rejection).
_PAYLOAD_CHECKS = {
    signal_type: tuple(
        (key, frozenset(types), " or ".join(_JSON_TYPE_NAMES[t] for t in types)) for key, types in fields.items()
    )
    for signal_type, fields in PAYLOAD_SCHEMA.items()
}


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_age_ms: int
    max_skew_ms: int


@dataclass(frozen=True)
class Rejection:
    reason: str


class SignalRow(NamedTuple):
    """An accepted event on its way to PostgreSQL.

    A tuple, so a batch travels through Celery as a JSON array of arrays, fewer bytes and
    less work to encode and decode than an array of objects
    (docs/performance.md, "Batches as arrays"). The payload is already JSON text, which
    PostgreSQL's jsonb input takes as it is.
    """

    event_id: str
    user_id: int
    type: str
    timestamp: int
    payload: str
    partition: int
    offset: int

    def message(self) -> dict[str, Any]:
        """The event as a signal message again (for a dead letter made after acceptance)."""
        return {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "type": self.type,
            "timestamp": self.timestamp,
            "payload": orjson.loads(self.payload),
        }


def derived_event_id(topic: str, partition: int, offset: int) -> str:
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{topic}:{partition}:{offset}"))


def with_original_identity(raw: bytes, *, topic: str, partition: int, offset: int) -> bytes:
    """A dead letter to replay, carrying the identity its first delivery would have had.

    A message without `event_id` is identified by its Kafka coordinates; replayed, it gets
    new ones. Writing the original identity into it keeps a replay (or two) from storing
    the event twice. The `event_id` goes in as text, right after the object's opening
    brace, and every other byte stays as it was: a record refused for what it holds
    (nested too deeply, an integer beyond 64 bits, a lone surrogate, a key twice) goes
    back exactly so, to be judged again. Anything that is not a JSON object, or has an
    `event_id` already, goes back as it was.
    """
    message = _json_object(raw)
    if message is None or "event_id" in message:
        return raw
    brace = len(raw) - len(raw.lstrip(b" \t\r\n")) + 1
    identity = b'"event_id":"' + derived_event_id(topic, partition, offset).encode() + b'"'
    return raw[:brace] + identity + (b"," if message else b"") + raw[brace:]


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """The top-level object of a UTF-8 JSON text, or None. orjson first; what it refuses
    (integers beyond 64 bits, lone surrogates) the standard library may still read."""
    if not raw.lstrip(b" \t\r\n").startswith(b"{"):
        return None
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            message = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return None
    return message if isinstance(message, dict) else None


def _json_type(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # nested deeper than orjson writes
        return "(nested too deeply to show)"
    return text if len(text) <= 40 else text[:37] + "..."


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mistyped(field: str, expected: str, value: Any) -> Rejection:
    return Rejection(f"field '{field}' must be {expected}, got {_json_type(value)} {_show(value)}")


def ms_to_datetime(timestamp_ms: int) -> datetime:
    """An event time as messages carry it (ms since the epoch) as a datetime in UTC."""
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)


def _iso(ms: int) -> str:
    try:
        return ms_to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "beyond any calendar"


def _check_timestamp(value: Any, now_ms: int, limits: Limits) -> int | Rejection:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not _is_integer(value):
        return _mistyped("timestamp", "an integer (milliseconds since the epoch)", value)
    if 0 < value < SECONDS_NOT_MS_BELOW:
        return Rejection(
            f"field 'timestamp' {value} is absurd: {_iso(value)} read as milliseconds; "
            "it looks like seconds, send milliseconds since the epoch"
        )
    if value > now_ms + limits.max_skew_ms:
        return Rejection(
            f"field 'timestamp' {value} is absurd: {_iso(value)} is more than "
            f"{limits.max_skew_ms // 1000} s in the future"
        )
    if value < now_ms - limits.max_age_ms:
        return Rejection(
            f"field 'timestamp' {value} is absurd: {_iso(value)} is more than "
            f"{limits.max_age_ms // 86_400_000} days in the past"
        )
    return value


def _check_payload(signal_type: str, payload: Any) -> Rejection | None:
    # orjson makes exactly these types, so each check is one set lookup; isinstance would
    # take a bool for an integer (docs/performance.md, "Reading a record").
    if type(payload) is not dict:
        return _mistyped("payload", "an object", payload)
    for key, exact_types, expected in _PAYLOAD_CHECKS[signal_type]:
        if key not in payload:
            return Rejection(f"missing field 'payload.{key}' (required for type '{signal_type}')")
        value = payload[key]
        if type(value) not in exact_types:
            return _mistyped(f"payload.{key}", expected, value)
    if signal_type == "api_call" and not 100 <= payload["status_code"] <= 599:
        return Rejection(f"field 'payload.status_code' must be an HTTP status 100-599, got {payload['status_code']}")
    if signal_type == "purchase" and payload["amount"] < 0:
        return Rejection(f"field 'payload.amount' must not be negative, got {payload['amount']}")
    return None


def decode_signal(
    value: bytes | None, *, topic: str, partition: int, offset: int, now_ms: int, limits: Limits
) -> SignalRow | Rejection:
    """Validate one Kafka record against docs/design.md, "The signal message"."""
    if value is None or len(value) == 0:
        return Rejection("empty message: the record has no value")
    if len(value) > limits.max_bytes:
        return Rejection(f"oversize: {len(value)} bytes, the limit is {limits.max_bytes} bytes")
    if b"\\u0000" in value:
        return Rejection("contains a NUL character (\\u0000), which PostgreSQL cannot store in JSON")
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        return _not_json(value, error)
    if not isinstance(message, dict):
        return Rejection(f"not a JSON object: got {_json_type(message)}")

    for field in ("user_id", "type", "timestamp", "payload"):
        if field not in message:
            return Rejection(f"missing field '{field}'")

    user_id = message["user_id"]
    if type(user_id) is not int:  # orjson makes exact ints; a bool is not one
        return _mistyped("user_id", "an integer", user_id)
    if not 0 <= user_id <= BIGINT_MAX:
        return Rejection(f"field 'user_id' must be between 0 and {BIGINT_MAX}, got {user_id}")

    signal_type = message["type"]
    if type(signal_type) is not str:
        return _mistyped("type", "a string", signal_type)
    if signal_type not in PAYLOAD_SCHEMA:
        return Rejection(f"field 'type' must be one of {', '.join(SIGNAL_TYPES)}, got {_show(signal_type)}")

    timestamp = message["timestamp"]
    # Almost every record's time is a plausible integer: only the others are looked at closely.
    if (
        type(timestamp) is not int
        or timestamp < SECONDS_NOT_MS_BELOW
        or not now_ms - limits.max_age_ms <= timestamp <= now_ms + limits.max_skew_ms
    ):
        timestamp = _check_timestamp(timestamp, now_ms, limits)
        if isinstance(timestamp, Rejection):
            return timestamp

    payload = message["payload"]
    problem = _check_payload(signal_type, payload)
    if problem is not None:
        return problem

    event_id = message.get("event_id")
    if event_id is None:
        event_id = derived_event_id(topic, partition, offset)
    elif not isinstance(event_id, str):
        return _mistyped("event_id", "a UUID string", event_id)
    elif not _CANONICAL_UUID.match(event_id):
        # Other spellings (upper case, no dashes, braces) are accepted and normalised.
        try:
            event_id = str(uuid.UUID(event_id))
        except ValueError:
            return Rejection(f"field 'event_id' must be a UUID, got {_show(event_id)}")

    try:
        payload_json = orjson.dumps(payload).decode()
    except TypeError:
        return Rejection(f"field 'payload' is nested too deeply (more than {MAX_NESTING} levels)")
    return SignalRow(event_id, user_id, signal_type, timestamp, payload_json, partition, offset)


def _not_json(value: bytes, error: orjson.JSONDecodeError) -> Rejection:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as bad:
        return Rejection(f"not UTF-8: byte 0x{value[bad.start]:02x} at position {bad.start} is invalid")
    return Rejection(f"not JSON: {error.msg} at line {error.lineno} column {error.colno}")


# A dead letter's reason names the field and the value; its kind is a label with few
# values, for counting (`dead_letters_total{reason}`). First match wins.
DEAD_LETTER_CATEGORIES = (
    ("empty", re.compile(r"empty message")),
    ("oversize", re.compile(r"oversize:")),
    ("nul_character", re.compile(r"contains a NUL character")),
    ("not_utf8", re.compile(r"not UTF-8")),
    ("not_json", re.compile(r"not JSON")),
    ("not_an_object", re.compile(r"not a JSON object")),
    ("missing_field", re.compile(r"missing field")),
    ("absurd_timestamp", re.compile(r"field 'timestamp' \S+ is absurd")),
    ("too_deep", re.compile(r"field 'payload' is nested too deeply")),
    ("invalid_field", re.compile(r"field '")),
    ("unvalidated", re.compile(r"could not be validated")),
    ("refused_by_postgresql", re.compile(r"PostgreSQL refused")),
    ("not_stored", re.compile(r"could not be stored")),
)


def dead_letter_category(reason: str) -> str:
    """The kind of a dead letter's reason: one of DEAD_LETTER_CATEGORIES' names, or `other`."""
    for category, pattern in DEAD_LETTER_CATEGORIES:
        if pattern.match(reason):
            return category
    return "other"
