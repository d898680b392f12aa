"""The synthetic signal generator: deterministic, well-formed, realistic; no servers."""

from __future__ import annotations

import ipaddress
import json
import statistics
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest

from anomalies_app.rules import (
    DEFAULT_RULES,
    HIGH_API_FAILURE_RATE,
    HIGH_FREQUENCY_LOGIN,
    HIGH_VALUE_PURCHASE,
    RAPID_SUCCESSIVE_PURCHASES,
    REPEATED_LOGIN_FAILURES,
    UNUSUAL_LOCATION_LOGIN,
    UNUSUAL_TIME_ACTIVITY,
    in_quiet_hours,
)
from emitter import generator as generator_module
from emitter.generator import (
    INCIDENTS,
    LOCATIONS,
    NIGHT_OWL_EVERY,
    TRIP_MS,
    SignalGenerator,
    encode,
    home_ip_address,
    home_location,
    user_places,
)
from tests.test_scenarios import everything_detected

HOUR_MS = 3_600_000

PAYLOAD_TYPES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "login": {"login_method": str, "success": bool, "location": str, "ip_address": str},
    "purchase": {"amount": (int, float), "currency": str, "product_id": str, "payment_method": str},
    "api_call": {"endpoint": str, "method": str, "status_code": int, "response_time_ms": int},
    "click": {"page": str, "element": str},
    "file_access": {"path": str, "action": str},
}


def at(moment: str) -> int:
    return int(datetime.fromisoformat(moment).replace(tzinfo=UTC).timestamp() * 1000)


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


# --- the realistic mix's users: places, trips, habits, nights, incidents ----------------


def rules_broken(events: list[dict[str, Any]]) -> Counter[str]:
    """Anomalies per rule that the default rules find in a stream, seen at once."""
    return Counter(finding.anomaly_type for finding in everything_detected(events))


def test_a_user_has_a_home_and_one_to_three_other_places() -> None:
    for user_id in range(1, 2001):
        places = user_places(user_id)
        assert places[0] == home_location(user_id)
        assert 2 <= len(places) <= 4
        assert len(set(places)) == len(places)
        assert set(places) <= set(LOCATIONS)
        assert user_places(user_id) == places, "fixed per user"
    assert {len(user_places(user_id)) for user_id in range(1, 2001)} == {2, 3, 4}


def test_logins_come_from_the_place_of_the_moment() -> None:
    generator = SignalGenerator(seed=4, users=2000, start_ms=at("2026-03-01T10:00:00"), rate=200)
    logins = [event for event in (generator.next() for _ in range(120_000)) if event["type"] == "login"]
    for login in logins:
        place = generator.place(login["user_id"], login["timestamp"])
        assert (login["payload"]["location"], login["payload"]["ip_address"]) == place
    assert sum(login["payload"]["location"] != home_location(login["user_id"]) for login in logins) > 0


def test_trips_are_rare_one_place_each_and_mostly_to_the_users_own_places() -> None:
    generator = SignalGenerator(seed=5, users=1000, start_ms=0, rate=1000)
    start = at("2026-03-01T00:00:00")
    user_hours = away_hours = strange_hours = 0
    for user_id in range(1, 251):
        home = home_location(user_id)
        places_by_hour: dict[int, set[str]] = defaultdict(set)
        for minute in range(0, 30 * 24 * 60, 30):  # 30 days, every half hour
            timestamp = start + minute * 60_000
            location, ip_address = generator.place(user_id, timestamp)
            ipaddress.IPv4Address(ip_address)
            if location != home:
                places_by_hour[timestamp // HOUR_MS].add(location)
                strange_hours += location not in user_places(user_id)
            else:
                assert ip_address == home_ip_address(user_id)
        user_hours += 30 * 24
        away_hours += len(places_by_hour)
        # A trip lasts TRIP_MS from the user's own start: an hour sees at most two trips.
        assert all(len(places) <= 2 for places in places_by_hour.values())
    assert TRIP_MS >= 2 * HOUR_MS
    assert 0.002 < away_hours / user_hours < 0.03, "about one stretch in a hundred away"
    assert 0 < strange_hours < away_hours * 3 * 0.15, "somewhere new: one trip in twenty"


def test_a_trip_raises_one_anomaly_per_new_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generator_module, "INCIDENT_EVERY", 10**12)
    generator = SignalGenerator(seed=6, users=400, start_ms=at("2026-03-01T06:00:00"), rate=10)
    events = [generator.next() for _ in range(10 * 3600 * 12)]  # 12 hours
    places_seen: dict[int, set[str]] = defaultdict(set)
    for event in events:
        if event["type"] == "login" and event["payload"]["success"]:
            places_seen[event["user_id"]].add(event["payload"]["location"])
    new_places = sum(len(places) - 1 for places in places_seen.values())
    assert new_places > 0
    assert rules_broken(events)[UNUSUAL_LOCATION_LOGIN] == new_places


def test_habits_keep_everyday_traffic_within_the_counting_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generator_module, "INCIDENT_EVERY", 10**12)
    # 20 users at 2.5 events/s each: far busier than the default, so the habits do the work.
    generator = SignalGenerator(seed=7, users=20, start_ms=at("2026-03-01T06:00:00"), rate=50)
    events = [generator.next() for _ in range(50 * 7200)]
    broken = rules_broken(events)
    assert broken[HIGH_FREQUENCY_LOGIN] == broken[REPEATED_LOGIN_FAILURES] == broken[RAPID_SUCCESSIVE_PURCHASES] == 0
    types = Counter(event["type"] for event in events)
    assert types["purchase"] > 20 * 2 * 3
    logins = [event["payload"] for event in events if event["type"] == "login"]
    assert 0.9 < sum(login["success"] for login in logins) / len(logins) < 1


@pytest.mark.parametrize(
    ("kind", "rule"),
    [
        ("login_storm", HIGH_FREQUENCY_LOGIN),
        ("forgotten_password", REPEATED_LOGIN_FAILURES),
        ("shopping_spree", RAPID_SUCCESSIVE_PURCHASES),
        ("failing_client", HIGH_API_FAILURE_RATE),
    ],
)
def test_an_incident_breaks_its_rule_once(kind: str, rule: str) -> None:
    assert kind in INCIDENTS.values
    start = at("2026-03-01T10:00:00")
    for seed in range(20):
        generator = SignalGenerator(seed=seed, users=10, start_ms=start, rate=10)
        generator.incident_start(kind, 3, start)
        events = [event for _, _, event in sorted(generator.pending)]
        assert {event["user_id"] for event in events} == {3}
        assert all(start < event["timestamp"] < start + HOUR_MS for event in events)
        broken = rules_broken(events)
        del broken[HIGH_VALUE_PURCHASE]  # a spree's purchase may be a big one too
        assert broken == {rule: 1}, (seed, broken)


def test_incidents_come_out_among_the_events_in_event_time_order() -> None:
    generator = SignalGenerator(seed=8, users=10_000, start_ms=at("2026-03-01T10:00:00"), rate=1000)
    events = [generator.next() for _ in range(300_000)]
    ids = [event["event_id"] for event in events]
    assert len(set(ids)) == len(ids)
    times = [event["timestamp"] for event in events]
    assert all(later >= earlier - 1 for earlier, later in pairwise(times))
    broken = rules_broken(events)
    assert broken[HIGH_FREQUENCY_LOGIN] + broken[REPEATED_LOGIN_FAILURES] + broken[HIGH_API_FAILURE_RATE] > 0


def test_only_night_owls_are_active_in_the_quiet_hours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generator_module, "INCIDENT_EVERY", 10**12)
    quiet = DEFAULT_RULES[UNUSUAL_TIME_ACTIVITY]
    users = 1000
    generator = SignalGenerator(seed=9, users=users, start_ms=at("2026-03-01T01:55:00"), rate=100)
    events = [generator.next() for _ in range(100 * 900)]  # 01:55 to 02:10
    night = [event for event in events if in_quiet_hours(quiet, event["timestamp"])]
    day = [event for event in events if not in_quiet_hours(quiet, event["timestamp"])]
    owls = {event["user_id"] for event in night}
    assert owls <= set(range(1, users + 1, NIGHT_OWL_EVERY))
    assert len(owls) == users // NIGHT_OWL_EVERY
    assert len({event["user_id"] for event in day}) > 10 * len(owls)
    broken = rules_broken(events)
    assert broken[UNUSUAL_TIME_ACTIVITY] == len(owls), "one anomaly per night owl and night"
    # Each owl keeps the day's pace of logins, purchases and failures: the rest is browsing.
    night_types = Counter(event["type"] for event in night)
    assert night_types["login"] < len(night) / NIGHT_OWL_EVERY
    assert broken[HIGH_FREQUENCY_LOGIN] == broken[HIGH_API_FAILURE_RATE] == 0


@pytest.mark.parametrize("start", ["2026-03-01T10:00:00", "2026-03-01T01:30:00"])
def test_an_hour_of_the_realistic_mix_raises_few_anomalies(start: str) -> None:
    """The default pace per user (10,000 users at 1,000 events/s), a twentieth of the users."""
    generator = SignalGenerator(seed=10, users=500, start_ms=at(start), rate=50)
    events = [generator.next() for _ in range(50 * 3600)]
    broken = rules_broken(events)
    assert sum(broken.values()) / len(events) * 1000 < 0.5, broken


def test_clean_traffic_has_no_trips_nights_or_incidents(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generator_module, "INCIDENT_EVERY", 1)
    monkeypatch.setattr(generator_module, "AWAY_SHARE", 1.0)
    users = 500
    generator = SignalGenerator(seed=11, users=users, start_ms=at("2026-03-01T02:00:00"), rate=100, clean=True)
    events = [generator.next() for _ in range(5000)]
    assert not generator.pending
    logins = [event for event in events if event["type"] == "login"]
    assert logins
    assert all(login["payload"]["location"] == home_location(login["user_id"]) for login in logins)
    assert len({event["user_id"] for event in events}) > 2 * users // NIGHT_OWL_EVERY
    realistic = SignalGenerator(seed=11, users=users, start_ms=at("2026-03-01T02:00:00"), rate=100)
    assert [realistic.next() for _ in range(100)] and realistic.pending, "the realistic mix does have them"
