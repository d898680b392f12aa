"""decode_signal: every kind of bad record gets a reason naming the field and the problem."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from signals_app.messages import (
    Limits,
    Rejection,
    SignalRow,
    dead_letter_category,
    decode_signal,
    derived_event_id,
    with_original_identity,
)
from tests import factories
from tests.factories import PAYLOADS, encoded

NOW = int(time.time() * 1000)
LIMITS = Limits(max_bytes=65_536, max_age_ms=365 * 86_400_000, max_skew_ms=300_000)


def signal_message(signal_type: str = "click", **changes: Any) -> dict[str, Any]:
    """A valid message stamped at NOW, the moment every decode here takes as now (however
    long the suite has been running)."""
    return factories.signal_message(signal_type, **{"timestamp": NOW, **changes})


def decode(value: bytes | None, offset: int = 7) -> SignalRow | Rejection:
    return decode_signal(value, topic="signals", partition=2, offset=offset, now_ms=NOW, limits=LIMITS)


def deep_list(levels: int) -> list[Any]:
    nested: list[Any] = []
    for _ in range(levels - 1):
        nested = [nested]
    return nested


def reason(value: bytes | None) -> str:
    result = decode(value)
    assert isinstance(result, Rejection), result
    return result.reason


@pytest.mark.parametrize("signal_type", sorted(PAYLOADS))
def test_a_valid_message_of_each_type_is_accepted_as_sent(signal_type: str) -> None:
    message = signal_message(signal_type, payload={**PAYLOADS[signal_type], "extra": [1, 2]})
    row = decode(encoded(message))
    assert isinstance(row, SignalRow)
    assert row.message() == message
    assert (row.partition, row.offset) == (2, 7)


def test_without_event_id_the_identity_is_the_kafka_record() -> None:
    message = signal_message(event_id=...)
    first = decode(encoded(message), offset=7)
    again = decode(encoded(message), offset=7)
    other = decode(encoded(message), offset=8)
    assert isinstance(first, SignalRow) and isinstance(again, SignalRow) and isinstance(other, SignalRow)
    assert first.event_id == again.event_id == derived_event_id("signals", 2, 7)
    assert other.event_id != first.event_id


def test_event_id_is_normalised() -> None:
    event = decode(encoded(signal_message(event_id="6F2A7F4E4C1B4A499D0E3C1F3B8E5A10")))
    assert isinstance(event, SignalRow)
    assert event.event_id == "6f2a7f4e-4c1b-4a49-9d0e-3c1f3b8e5a10"


def test_a_timestamp_sent_as_an_integral_float_is_accepted() -> None:
    event = decode(encoded(signal_message(timestamp=float(NOW))))
    assert isinstance(event, SignalRow) and event.timestamp == NOW


def test_a_timestamp_in_seconds_is_refused_even_where_the_age_limit_reaches_back_so_far() -> None:
    limits = Limits(max_bytes=65_536, max_age_ms=NOW, max_skew_ms=300_000)
    value = encoded(signal_message(timestamp=1_640_995_200))
    result = decode_signal(value, topic="signals", partition=2, offset=7, now_ms=NOW, limits=limits)
    assert isinstance(result, Rejection) and "looks like seconds" in result.reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "empty message"),
        (b"", "empty message"),
        (b"\xff\xfe{}", "not UTF-8: byte 0xff at position 0 is invalid"),
        (b"{not json", "not JSON: unexpected character, expected a string key at line 1 column 2"),
        (b'{"user_id": 1,', "not JSON"),
        (b"[1, 2]", "not a JSON object: got array"),
        (b'"text"', "not a JSON object: got string"),
        (b"null", "not a JSON object: got null"),
        (b"[" * 100_000 + b"]" * 100_000, "oversize"),
        (encoded(signal_message(user_id=...)), "missing field 'user_id'"),
        (encoded(signal_message(type=...)), "missing field 'type'"),
        (encoded(signal_message(timestamp=...)), "missing field 'timestamp'"),
        (encoded(signal_message(payload=...)), "missing field 'payload'"),
        (encoded(signal_message(user_id="abc")), "field 'user_id' must be an integer, got string \"abc\""),
        (encoded(signal_message(user_id="123")), "field 'user_id' must be an integer, got string \"123\""),
        (encoded(signal_message(user_id=1.5)), "field 'user_id' must be an integer, got number 1.5"),
        (encoded(signal_message(user_id=True)), "field 'user_id' must be an integer, got boolean true"),
        (encoded(signal_message(user_id=None)), "field 'user_id' must be an integer, got null"),
        (encoded(signal_message(user_id=-1)), "field 'user_id' must be between 0 and"),
        (encoded(signal_message(user_id=2**63)), "field 'user_id' must be between 0 and"),
        (encoded(signal_message(type=3)), "field 'type' must be a string, got integer 3"),
        (encoded(signal_message(type="logout")), "field 'type' must be one of login, purchase, click"),
        (encoded(signal_message(timestamp="2024-01-01")), "field 'timestamp' must be an integer"),
        (encoded(signal_message(timestamp=1_640_995_200)), "looks like seconds"),
        (encoded(signal_message(timestamp=NOW + 301_000)), "more than 300 s in the future"),
        (encoded(signal_message(timestamp=NOW - 366 * 86_400_000)), "more than 365 days in the past"),
        (encoded(signal_message(timestamp=10**30)), "field 'timestamp'"),
        (encoded(signal_message(timestamp=-5)), "more than 365 days in the past"),
        (encoded(signal_message(payload=[1])), "field 'payload' must be an object, got array"),
        (encoded(signal_message(event_id="nope")), "field 'event_id' must be a UUID, got \"nope\""),
        (encoded(signal_message(event_id=12)), "field 'event_id' must be a UUID string, got integer 12"),
        (encoded(signal_message(payload={"page": "/"})), "missing field 'payload.element'"),
        (
            encoded(signal_message("purchase", payload={**PAYLOADS["purchase"], "amount": "12.00"})),
            "field 'payload.amount' must be integer or number, got string \"12.00\"",
        ),
        (
            encoded(signal_message("purchase", payload={**PAYLOADS["purchase"], "amount": -1})),
            "field 'payload.amount' must not be negative",
        ),
        (
            encoded(signal_message("login", payload={**PAYLOADS["login"], "success": "yes"})),
            "field 'payload.success' must be boolean, got string \"yes\"",
        ),
        (
            encoded(signal_message("login", payload={**PAYLOADS["login"], "success": 1})),
            "field 'payload.success' must be boolean, got integer 1",
        ),
        (
            encoded(signal_message("api_call", payload={**PAYLOADS["api_call"], "status_code": 200.0})),
            "field 'payload.status_code' must be integer, got number 200.0",
        ),
        (
            encoded(signal_message("api_call", payload={**PAYLOADS["api_call"], "status_code": 999})),
            "must be an HTTP status 100-599",
        ),
        (
            encoded(signal_message("api_call", payload={**PAYLOADS["api_call"], "response_time_ms": True})),
            "field 'payload.response_time_ms' must be integer or number, got boolean true",
        ),
        (encoded(signal_message(payload={"page": "a\u0000b", "element": "x"})), "NUL character"),
    ],
)
def test_every_kind_of_bad_record_is_refused_with_a_reason(value: bytes | None, expected: str) -> None:
    assert expected in reason(value)
    assert dead_letter_category(reason(value)) != "other", reason(value)


@pytest.mark.parametrize(
    ("value", "category"),
    [
        (None, "empty"),
        (b"[" * 100_000 + b"]" * 100_000, "oversize"),
        (encoded(signal_message(payload={"page": "a\u0000b", "element": "x"})), "nul_character"),
        (b"\xff\xfe{}", "not_utf8"),
        (b"{not json", "not_json"),
        (b"[1, 2]", "not_an_object"),
        (encoded(signal_message(payload={"page": "/"})), "missing_field"),
        (encoded(signal_message(timestamp=1_640_995_200)), "absurd_timestamp"),
        (encoded(signal_message(timestamp="2024-01-01")), "invalid_field"),
        (encoded(signal_message(user_id="abc")), "invalid_field"),
        (encoded(signal_message(payload={"page": "/", "element": "x", "deep": deep_list(300)})), "too_deep"),
    ],
)
def test_a_dead_letter_reason_has_a_kind_for_counting(value: bytes | None, category: str) -> None:
    assert dead_letter_category(reason(value)) == category


@pytest.mark.parametrize(
    ("reason_text", "category"),
    [
        ("could not be validated: KeyError: 'x'", "unvalidated"),
        ("PostgreSQL refused the event: value too long", "refused_by_postgresql"),
        ("could not be stored after 4 attempts: ProgrammingError: no such column", "not_stored"),
        ("something nobody wrote yet", "other"),
    ],
)
def test_reasons_written_outside_decoding_have_a_kind_too(reason_text: str, category: str) -> None:
    assert dead_letter_category(reason_text) == category


def test_oversize_is_judged_before_parsing() -> None:
    big = encoded(signal_message(payload={"page": "/", "element": "x" * 70_000}))
    assert reason(big) == f"oversize: {len(big)} bytes, the limit is 65536 bytes"


def test_timestamp_edges_of_the_accepted_window() -> None:
    assert isinstance(decode(encoded(signal_message(timestamp=NOW + 300_000))), SignalRow)
    assert isinstance(decode(encoded(signal_message(timestamp=NOW - 365 * 86_400_000))), SignalRow)
    assert isinstance(decode(encoded(signal_message(timestamp=NOW + 300_001))), Rejection)
    assert isinstance(decode(encoded(signal_message(timestamp=NOW - 365 * 86_400_000 - 1))), Rejection)


def test_long_values_are_shortened_in_the_reason() -> None:
    text = reason(encoded(signal_message(type="x" * 500)))
    assert len(text) < 150 and text.endswith("...")


def test_non_finite_numbers_are_not_json() -> None:
    raw = json.dumps(signal_message("purchase", payload={**PAYLOADS["purchase"], "amount": float("inf")})).encode()
    assert reason(raw).startswith("not JSON: unexpected character")
    assert reason(raw.replace(b"Infinity", b"1e999")).startswith("not JSON: number is infinity")


def test_a_replayed_message_keeps_the_identity_of_its_first_delivery() -> None:
    raw = encoded(signal_message(event_id=...))
    replayed = with_original_identity(raw, topic="signals", partition=2, offset=7)
    first = decode(raw, offset=7)
    again = decode_signal(replayed, topic="signals", partition=0, offset=99, now_ms=NOW, limits=LIMITS)
    assert isinstance(first, SignalRow) and isinstance(again, SignalRow)
    assert again.event_id == first.event_id


def test_replaying_keeps_messages_with_an_event_id_or_not_json_as_they_are() -> None:
    with_id = encoded(signal_message())
    assert with_original_identity(with_id, topic="t", partition=0, offset=1) == with_id
    assert with_original_identity(b"\xff not json", topic="t", partition=0, offset=1) == b"\xff not json"
    assert with_original_identity(b"[1]", topic="t", partition=0, offset=1) == b"[1]"


def hard_to_replay() -> dict[str, bytes]:
    """Records without an event_id that the old replay could not write back, or changed."""
    good = b'"type": "click", "timestamp": 1, "payload": {"page": "/", "element": "a"}'
    return {
        "nested too deeply": b'{"user_id": 1, ' + good + b', "deep": ' + b"[" * 300 + b"]" * 300 + b"}",
        "an integer beyond 64 bits": b'{"user_id": 18446744073709551616, ' + good + b"}",
        "a lone surrogate": b'{"user_id": 1, ' + good + b', "note": "\\ud800"}',
        "a key twice": b'{"user_id": 1, "user_id": "two", ' + good + b"}",
        "an empty object": b"{}",
        "space first": b'  \n {"user_id": 1}',
    }


@pytest.mark.parametrize("kind", list(hard_to_replay()))
def test_a_replay_writes_the_identity_in_and_leaves_every_other_byte(kind: str) -> None:
    raw = hard_to_replay()[kind]
    replayed = with_original_identity(raw, topic="signals", partition=1, offset=9)
    identity = b'"event_id":"' + derived_event_id("signals", 1, 9).encode() + b'"'
    assert replayed.replace(identity + b",", b"", 1).replace(identity, b"", 1) == raw
    assert json.loads(replayed)["event_id"] == derived_event_id("signals", 1, 9)
    assert with_original_identity(replayed, topic="signals", partition=5, offset=0) == replayed, "replayed again"
