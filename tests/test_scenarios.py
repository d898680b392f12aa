"""Ground-truth scenarios woven into clean traffic (emitter/scenarios.py): pure."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest

from anomalies_app.detection import (
    Finding,
    WindowEntry,
    count_episodes,
    failure_episodes,
    findings_merge,
    high_value_finding,
    new_location_findings,
    quiet_hours_finding,
)
from anomalies_app.rules import (
    DEFAULT_RULES,
    HIGH_API_FAILURE_RATE,
    HIGH_FREQUENCY_LOGIN,
    HIGH_VALUE_PURCHASE,
    RAPID_SUCCESSIVE_PURCHASES,
    REPEATED_LOGIN_FAILURES,
    UNUSUAL_LOCATION_LOGIN,
    UNUSUAL_TIME_ACTIVITY,
    is_api_failure,
)
from emitter.generator import SignalGenerator
from emitter.management.commands.emit_signals import allowed
from emitter.scenarios import ANOMALY_KINDS, NEAR_MISS_KINDS, ScenarioWeaver, clean_start_ms

QUIET = DEFAULT_RULES[UNUSUAL_TIME_ACTIVITY]


def at(moment: str) -> int:
    return int(datetime.fromisoformat(moment).replace(tzinfo=UTC).timestamp() * 1000)


def weave(*, seed: int, start_ms: int, count: int, rate: float = 2000, users: int = 200) -> tuple[ScenarioWeaver, list]:
    background = SignalGenerator(
        seed=seed,
        users=users,
        start_ms=start_ms,
        rate=rate,
        clean=True,
        caps={
            "login": allowed(DEFAULT_RULES[HIGH_FREQUENCY_LOGIN]),
            "purchase": allowed(DEFAULT_RULES[RAPID_SUCCESSIVE_PURCHASES]),
        },
        first_user_id=1_000,
    )
    weaver = ScenarioWeaver(background=background, quiet_rule=QUIET, first_user_id=1_000 + users, every=40, seed=seed)
    events = [weaver.next() for _ in range(count)]
    return weaver, events + weaver.leftover()


def everything_detected(events: list[dict[str, Any]]) -> list[Finding]:
    """What the rules find in the whole stream, seen at once (the reference, no windows)."""
    rules = DEFAULT_RULES
    by_kind: dict[tuple[int, str], list[WindowEntry]] = defaultdict(list)
    places: dict[int, dict[str, WindowEntry]] = defaultdict(dict)
    findings: list[Finding | None] = []
    for event in events:
        user, payload = event["user_id"], event["payload"]
        entry = WindowEntry(event["timestamp"], event["event_id"])
        findings.append(quiet_hours_finding(rules[UNUSUAL_TIME_ACTIVITY], user, entry))
        if event["type"] == "login":
            by_kind[(user, "login")].append(entry._replace(failed=not payload["success"]))
            if payload["success"]:
                first = places[user].get(payload["location"])
                places[user][payload["location"]] = min(first, entry) if first else entry
        elif event["type"] == "purchase":
            by_kind[(user, "purchase")].append(entry)
            findings.append(high_value_finding(rules[HIGH_VALUE_PURCHASE], user, entry, payload["amount"]))
        elif is_api_failure(event["type"], payload):
            by_kind[(user, "api")].append(entry)
    counting = {"login": HIGH_FREQUENCY_LOGIN, "purchase": RAPID_SUCCESSIVE_PURCHASES, "api": HIGH_API_FAILURE_RATE}
    for (user, kind), entries in by_kind.items():
        entries.sort()
        added_at = [e.timestamp for e in entries]
        findings += count_episodes(rules[counting[kind]], user, entries, added_at)
        if kind == "login":
            findings += failure_episodes(rules[REPEATED_LOGIN_FAILURES], user, entries, added_at)
    all_ids = {event["event_id"] for event in events}
    for user, first_logins in places.items():
        findings += new_location_findings(rules[UNUSUAL_LOCATION_LOGIN], user, first_logins, all_ids)
    return findings_merge(f for f in findings if f)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_rules_find_exactly_what_was_injected(seed: int) -> None:
    weaver, events = weave(seed=seed, start_ms=at("2026-03-01T10:00:00"), count=20_000)
    found = Counter((f.user_id, f.anomaly_type) for f in everything_detected(events))
    injected = Counter((s.user_id, s.anomaly_type) for s in weaver.scenarios if s.anomaly_type)
    assert found == injected
    assert len({e["event_id"] for e in events}) == len(events), "every event has its own id"
    assert {s.kind for s in weaver.scenarios} == set(ANOMALY_KINDS + NEAR_MISS_KINDS)
    assert len(injected) > 100


def test_clean_traffic_alone_breaks_no_rule() -> None:
    background = SignalGenerator(
        seed=5,
        users=50,  # few users: many events each, so the caps do the work
        start_ms=at("2026-03-01T10:00:00"),
        rate=200,
        clean=True,
        caps={
            "login": allowed(DEFAULT_RULES[HIGH_FREQUENCY_LOGIN]),
            "purchase": allowed(DEFAULT_RULES[RAPID_SUCCESSIVE_PURCHASES]),
        },
    )
    events = [background.next() for _ in range(50_000)]
    assert everything_detected(events) == []
    raw = SignalGenerator(seed=5, users=50, start_ms=at("2026-03-01T10:00:00"), rate=200)
    assert everything_detected([raw.next() for _ in range(50_000)]), "unclean traffic does break rules"


def test_the_same_seed_weaves_the_same_run() -> None:
    first = weave(seed=9, start_ms=at("2026-03-01T10:00:00"), count=3_000)[1]
    second = weave(seed=9, start_ms=at("2026-03-01T10:00:00"), count=3_000)[1]
    assert first == second


def test_events_come_out_in_event_time_order_but_the_late_quiet_hours_ones() -> None:
    start = at("2026-03-01T10:00:00")
    _, events = weave(seed=4, start_ms=start, count=5_000)
    times = [e["timestamp"] for e in events]
    on_time = [t for t in times if t >= start]
    assert on_time == sorted(on_time)
    late = [t for t in times if t < start]
    assert late and all(t <= at("2026-03-01T05:00:00") for t in late), "the last quiet period, and its edges"


@pytest.mark.parametrize(
    ("now", "span_s", "start"),
    [
        ("2026-03-01T10:00:00", 100, "2026-03-01T10:00:00"),  # daytime: now
        ("2026-03-01T03:30:00", 100, "2026-03-01T01:56:20"),  # inside: just before the period
        ("2026-03-01T01:59:00", 100, "2026-03-01T01:56:20"),  # would run into it
        ("2026-03-01T05:00:00", 100, "2026-03-01T05:00:00"),  # just after
    ],
)
def test_a_run_starts_out_of_the_quiet_hours(now: str, span_s: int, start: str) -> None:
    assert clean_start_ms(QUIET, at(now), span_s * 1000) == at(start)
