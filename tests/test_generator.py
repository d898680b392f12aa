"""The synthetic signal generator: deterministic, well-formed, realistic; no servers."""

from __future__ import annotations

import ipaddress
import json
import statistics
import uuid
from collections import Counter
from typing import Any

import pytest

from emitter.generator import SignalGenerator, encode

PAYLOAD_TYPES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "login": {"login_method": str, "success": bool, "location": str, "ip_address": str},
    "purchase": {"amount": (int, float), "currency": str, "product_id": str, "payment_method": str},
    "api_call": {"endpoint": str, "method": str, "status_code": int, "response_time_ms": int},
    "click": {"page": str, "element": str},
    "file_access": {"path": str, "action": str},
}


def generate(
    count: int, *, seed: int | None = 1, users: int = 10_000, start_ms: int = 0, rate: float = 1000
) -> list[dict[str, Any]]:
    generator = SignalGenerator(seed=seed, users=users, start_ms=start_ms, rate=rate)
    return [generator.next() for _ in range(count)]


@pytest.fixture(scope="module")
def sample() -> list[dict[str, Any]]:
    return generate(20_000, seed=42)


def test_same_seed_gives_the_same_events() -> None:
    assert generate(1000, seed=7) == generate(1000, seed=7)


def test_different_seeds_give_different_events() -> None:
    first, second = generate(100, seed=7), generate(100, seed=8)
    assert {event["event_id"] for event in first}.isdisjoint(event["event_id"] for event in second)
    assert [event["payload"] for event in first] != [event["payload"] for event in second]


def test_without_seed_runs_differ() -> None:
    assert generate(10, seed=None) != generate(10, seed=None)


def test_event_has_the_message_fields(sample: list[dict[str, Any]]) -> None:
    for event in sample:
        assert set(event) == {"event_id", "user_id", "type", "timestamp", "payload"}
        assert uuid.UUID(event["event_id"]).version == 4
        assert type(event["user_id"]) is int
        assert type(event["timestamp"]) is int


def test_event_ids_are_unique(sample: list[dict[str, Any]]) -> None:
    assert len({event["event_id"] for event in sample}) == len(sample)


def test_every_type_occurs_with_its_payload(sample: list[dict[str, Any]]) -> None:
    assert {event["type"] for event in sample} == set(PAYLOAD_TYPES)
    for event in sample:
        payload = event["payload"]
        expected = PAYLOAD_TYPES[event["type"]]
        assert set(payload) == set(expected), event
        for key, kind in expected.items():
            assert isinstance(payload[key], kind), (key, event)
            if kind is not bool:
                assert not isinstance(payload[key], bool), (key, event)


def test_payload_values_are_plausible(sample: list[dict[str, Any]]) -> None:
    for event in sample:
        payload = event["payload"]
        if event["type"] == "login":
            ipaddress.IPv4Address(payload["ip_address"])
        elif event["type"] == "purchase":
            assert payload["amount"] > 0
            assert len(payload["currency"]) == 3
        elif event["type"] == "api_call":
            assert payload["endpoint"].startswith("/")
            assert payload["method"] in {"GET", "POST", "PUT", "DELETE"}
            assert 200 <= payload["status_code"] <= 599
            assert payload["response_time_ms"] >= 1


def test_user_ids_stay_in_range() -> None:
    events = generate(5000, users=50)
    assert {event["user_id"] for event in events} == set(range(1, 51))


def test_single_user() -> None:
    assert {event["user_id"] for event in generate(100, users=1)} == {1}


def test_mix_looks_like_real_traffic(sample: list[dict[str, Any]]) -> None:
    types = Counter(event["type"] for event in sample)
    assert types["click"] + types["api_call"] > len(sample) / 2
    assert types.most_common(2)[0][0] in {"click", "api_call"}
    assert types["purchase"] < len(sample) * 0.05

    logins = [event["payload"] for event in sample if event["type"] == "login"]
    assert 0.9 < sum(login["success"] for login in logins) / len(logins) < 1

    statuses = [event["payload"]["status_code"] for event in sample if event["type"] == "api_call"]
    assert 0.9 < sum(200 <= status < 300 for status in statuses) / len(statuses) < 1
    assert any(status >= 500 for status in statuses)

    amounts = [event["payload"]["amount"] for event in sample if event["type"] == "purchase"]
    assert statistics.median(amounts) < 100
    assert sum(amount > 1000 for amount in amounts) < len(amounts) * 0.01


def test_heavy_users_send_more() -> None:
    per_user = Counter(event["user_id"] for event in generate(50_000, users=1000))
    heavy = sum(per_user[user_id] for user_id in range(1, 101))
    assert heavy > 50_000 * 0.25


def test_high_value_purchases_happen_but_rarely() -> None:
    amounts = [event["payload"]["amount"] for event in generate(200_000, seed=3) if event["type"] == "purchase"]
    assert 0 < sum(amount > 1000 for amount in amounts) < len(amounts) * 0.01


def test_timestamps_follow_the_virtual_clock() -> None:
    events = generate(10, start_ms=1_640_995_200_000, rate=3)
    assert [event["timestamp"] for event in events] == [
        1_640_995_200_000 + offset for offset in (0, 333, 666, 1000, 1333, 1666, 2000, 2333, 2666, 3000)
    ]


def test_fast_rate_stamps_several_events_per_millisecond() -> None:
    events = generate(6, start_ms=1000, rate=4000)
    assert [event["timestamp"] for event in events] == [1000, 1000, 1000, 1000, 1001, 1001]


def test_rate_change_keeps_past_times_and_spaces_later_ones() -> None:
    generator = SignalGenerator(seed=1, users=10, start_ms=0, rate=10)
    before = [generator.next()["timestamp"] for _ in range(3)]
    generator.rate_change(1)
    after = [generator.next()["timestamp"] for _ in range(3)]
    assert before == [0, 100, 200]
    assert after == [300, 1300, 2300]


def test_rate_change_does_not_change_the_events() -> None:
    steady = generate(20, seed=5)
    generator = SignalGenerator(seed=5, users=10_000, start_ms=0, rate=1000)
    changed = [generator.next() for _ in range(10)]
    generator.rate_change(5000)
    changed += [generator.next() for _ in range(10)]
    assert [{**event, "timestamp": 0} for event in changed] == [{**event, "timestamp": 0} for event in steady]


@pytest.mark.parametrize(("users", "rate"), [(0, 1), (10, 0), (10, -5)])
def test_refuses_impossible_settings(users: int, rate: float) -> None:
    with pytest.raises(ValueError):
        SignalGenerator(seed=1, users=users, start_ms=0, rate=rate)


def test_encode_key_is_the_user_id(sample: list[dict[str, Any]]) -> None:
    for event in sample[:1000]:
        key, _ = encode(event)
        assert key == str(event["user_id"]).encode()


def test_encode_value_is_compact_utf8_json(sample: list[dict[str, Any]]) -> None:
    for event in sample[:1000]:
        _, value = encode(event)
        assert json.loads(value.decode("utf-8")) == event
        assert b'": ' not in value
        assert b'", "' not in value


def test_encode_keeps_non_ascii_as_utf8() -> None:
    event = {
        "event_id": str(uuid.uuid4()),
        "user_id": 5,
        "type": "login",
        "timestamp": 0,
        "payload": {"location": "München, DE"},
    }
    _, value = encode(event)
    assert "München".encode() in value
    assert json.loads(value) == event
