"""Episodes from window contents (anomalies_app/detection.py): pure, no servers."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime

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
    view_radius_ms,
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
)

T0 = 1_767_261_600_000  # 2026-01-01T10:00:00Z, outside the quiet hours
USER = 7


def entries(times: list[int], *, failed: list[bool] | None = None) -> list[WindowEntry]:
    flags = failed or [False] * len(times)
    pairs = enumerate(zip(times, flags, strict=True))
    return sorted(WindowEntry(t, str(uuid.UUID(int=i + 1)), flag) for i, (t, flag) in pairs)


def count_findings(anomaly_type: str, times: list[int]) -> list[Finding]:
    window = entries(times)
    return count_episodes(DEFAULT_RULES[anomaly_type], USER, window, sorted(times))


def spread(count: int, span_ms: int, start: int = T0) -> list[int]:
    return [start + (span_ms * i) // max(count - 1, 1) for i in range(count)]


@pytest.mark.parametrize(("count", "raised"), [(10, 0), (11, 1)])
def test_high_frequency_login_more_than_10_in_60_s(count: int, raised: int) -> None:
    assert len(count_findings(HIGH_FREQUENCY_LOGIN, spread(count, 59_000))) == raised


def test_the_window_includes_both_ends_and_nothing_older() -> None:
    assert len(count_findings(HIGH_FREQUENCY_LOGIN, spread(11, 60_000))) == 1
    assert count_findings(HIGH_FREQUENCY_LOGIN, spread(11, 60_001)) == []


def test_a_finding_carries_its_evidence() -> None:
    times = spread(12, 30_000)
    (finding,) = count_findings(HIGH_FREQUENCY_LOGIN, times)
    assert finding.value == 12
    assert finding.start_ms == times[10], "the episode begins at the 11th login"
    assert finding.end_ms == times[-1]
    assert (finding.window_start_ms, finding.window_end_ms) == (times[-1] - 60_000, times[-1])
    assert len(finding.event_ids) == 12


def test_a_burst_that_persists_is_one_episode() -> None:
    times = [T0 + i * 2_000 for i in range(300)]  # a login every 2 s for 10 minutes
    (finding,) = count_findings(HIGH_FREQUENCY_LOGIN, times)
    assert (finding.start_ms, finding.end_ms, finding.value) == (times[10], times[-1], 31)


def test_a_new_burst_after_the_condition_cleared_is_a_new_episode() -> None:
    first = spread(11, 10_000)
    second = spread(11, 10_000, start=first[-1] + 61_000)
    assert len(count_findings(HIGH_FREQUENCY_LOGIN, first + second)) == 2


def test_the_condition_clears_when_the_count_dips_between_two_breaking_logins() -> None:
    # 11 logins within 10 s break the rule; the next login comes 55 s later, when the
    # first login has left the window: the count was 10 just before it, then 11 again.
    first = spread(11, 10_000)
    later = first[0] + 60_001 + 500
    findings = count_findings(HIGH_FREQUENCY_LOGIN, [*first, later])
    assert [f.start_ms for f in findings] == [first[-1], later]


@pytest.mark.parametrize(("count", "raised"), [(4, 0), (5, 1)])
def test_rapid_successive_purchases_5_within_an_hour(count: int, raised: int) -> None:
    assert len(count_findings(RAPID_SUCCESSIVE_PURCHASES, spread(count, 3_000_000))) == raised


def test_five_purchases_over_more_than_an_hour_are_not_rapid() -> None:
    assert count_findings(RAPID_SUCCESSIVE_PURCHASES, spread(5, 3_600_001)) == []


@pytest.mark.parametrize(("count", "raised"), [(4, 0), (5, 1)])
def test_high_api_failure_rate_5_within_60_s(count: int, raised: int) -> None:
    assert len(count_findings(HIGH_API_FAILURE_RATE, spread(count, 60_000))) == raised


def failures(pattern: str, gap_ms: int = 1_000) -> list[Finding]:
    """Logins in this order, one `gap_ms` apart: F failed, S succeeded."""
    times = [T0 + i * gap_ms for i in range(len(pattern))]
    logins = entries(times, failed=[mark == "F" for mark in pattern])
    return failure_episodes(DEFAULT_RULES[REPEATED_LOGIN_FAILURES], USER, logins, times)


def test_repeated_login_failures_a_success_in_between_resets() -> None:
    assert failures("FFSF") == []
    assert failures("FF") == []
    (finding,) = failures("FFF")
    assert (finding.value, len(finding.event_ids)) == (3, 3)


def test_a_long_run_of_failures_is_one_episode_and_a_new_run_another() -> None:
    (finding,) = failures("FFFFFFF")
    assert finding.value == 7
    assert len(failures("FFFFSFFF")) == 2


def test_failures_further_apart_than_the_window_are_not_a_run() -> None:
    window_ms = DEFAULT_RULES[REPEATED_LOGIN_FAILURES].window_seconds * 1000
    assert failures("FFF", gap_ms=window_ms // 2) != []
    assert failures("FFF", gap_ms=window_ms // 2 + 1) == []


@pytest.mark.parametrize(("amount", "raised"), [(1000, False), (1000.00, False), (1000.01, True), (5000, True)])
def test_high_value_purchase_above_1000(amount: float, raised: bool) -> None:
    found = high_value_finding(DEFAULT_RULES[HIGH_VALUE_PURCHASE], USER, WindowEntry(T0, "p"), amount)
    assert (found is not None) is raised


def at(moment: str, day: int = 1) -> int:
    hour, minute, second = (int(part) for part in moment.split(":"))
    return int(datetime(2026, 3, day, hour, minute, second, tzinfo=UTC).timestamp() * 1000)


def test_quiet_hours_activity_is_one_anomaly_per_user_and_night() -> None:
    rule = DEFAULT_RULES[UNUSUAL_TIME_ACTIVITY]
    assert quiet_hours_finding(rule, USER, WindowEntry(at("01:59:59"), "a")) is None
    night = [quiet_hours_finding(rule, USER, WindowEntry(at(t), t)) for t in ("02:00:00", "03:10:00", "04:59:59")]
    next_night = quiet_hours_finding(rule, USER, WindowEntry(at("02:30:00", day=2), "b"))
    merged = findings_merge([f for f in [*night, next_night] if f])
    assert [(f.key, f.start_ms, f.end_ms) for f in merged] == [
        ("2026-03-01", at("02:00:00"), at("04:59:59")),
        ("2026-03-02", at("02:30:00", day=2), at("02:30:00", day=2)),
    ]


def test_a_quiet_period_across_midnight_belongs_to_the_evening_it_began() -> None:
    rule = replace(DEFAULT_RULES[UNUSUAL_TIME_ACTIVITY], threshold=23, window_seconds=4 * 3600)
    late = quiet_hours_finding(rule, USER, WindowEntry(at("23:30:00"), "a"))
    early = quiet_hours_finding(rule, USER, WindowEntry(at("01:00:00", day=2), "b"))
    assert late and early and late.key == early.key == "2026-03-01"


def test_new_location_is_every_place_after_the_first() -> None:
    rule = DEFAULT_RULES[UNUSUAL_LOCATION_LOGIN]
    places = {"Berlin, DE": WindowEntry(T0, "home"), "Lagos, NG": WindowEntry(T0 + 5, "away")}
    (finding,) = new_location_findings(rule, USER, places, {"home", "away"})
    assert (finding.key, finding.event_ids) == ("Lagos, NG", ("away",))
    assert new_location_findings(rule, USER, places, {"other"}) == [], "only places first seen in this batch"
    assert new_location_findings(rule, USER, {"Berlin, DE": WindowEntry(T0, "home")}, {"home"}) == []


def test_a_late_first_login_makes_the_former_first_place_new() -> None:
    rule = DEFAULT_RULES[UNUSUAL_LOCATION_LOGIN]
    places = {"Berlin, DE": WindowEntry(T0, "home"), "Lagos, NG": WindowEntry(T0 - 5, "earlier")}
    (finding,) = new_location_findings(rule, USER, places, {"earlier"})
    assert finding.key == "Berlin, DE"


def test_a_changed_threshold_changes_the_episodes() -> None:
    rule = replace(DEFAULT_RULES[HIGH_FREQUENCY_LOGIN], threshold=20)
    times = spread(15, 30_000)
    assert count_episodes(rule, USER, entries(times), times) == []


def test_view_radius_is_two_windows() -> None:
    assert view_radius_ms(DEFAULT_RULES[HIGH_FREQUENCY_LOGIN]) == 120_001


def random_stream(seed: int, anomaly_type: str) -> list[WindowEntry]:
    """Bursts and lulls: each gap either short for the rule (its window over its threshold) or long."""
    rng = random.Random(seed)
    rule = DEFAULT_RULES[anomaly_type]
    window_ms = rule.window_seconds * 1000
    times: list[int] = []
    clock = T0
    for _ in range(rng.randint(5, 80)):
        clock += rng.choice([rng.randint(0, window_ms // int(rule.threshold)), rng.randint(0, window_ms * 2)])
        times.append(clock)
    flags = [rng.random() < 0.8 for _ in times] if anomaly_type == REPEATED_LOGIN_FAILURES else None
    return entries(times, failed=flags)


def episodes_of(anomaly_type: str, window: list[WindowEntry], added_at: list[int]) -> list[Finding]:
    episodes = failure_episodes if anomaly_type == REPEATED_LOGIN_FAILURES else count_episodes
    return episodes(DEFAULT_RULES[anomaly_type], USER, window, added_at)


STREAM_RULES = [HIGH_FREQUENCY_LOGIN, REPEATED_LOGIN_FAILURES, HIGH_API_FAILURE_RATE]


def test_the_random_streams_have_episodes_to_find() -> None:
    counts = []
    for anomaly_type in STREAM_RULES:
        for seed in range(40):
            stream = random_stream(seed, anomaly_type)
            counts.append(len(findings_merge(episodes_of(anomaly_type, stream, [e.timestamp for e in stream]))))
    assert sum(1 for n in counts if n) > 80 and max(counts) > 3, counts


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("anomaly_type", STREAM_RULES)
def test_pieces_from_partial_views_merge_into_exactly_the_true_episodes(seed: int, anomaly_type: str) -> None:
    """Whatever order events arrive in, in whatever batches, the pieces each arrival finds
    (each seeing only what has arrived so far, within its view) merge into the episodes of
    the whole set: nothing more, nothing less. (A late success splitting a run of failures
    is the one exception, so here no success arrives after a failure it precedes.)"""
    rng = random.Random(seed)
    everything = random_stream(seed, anomaly_type)
    truth = findings_merge(episodes_of(anomaly_type, everything, [e.timestamp for e in everything]))
    if anomaly_type == REPEATED_LOGIN_FAILURES:
        # Successes arrive first; failures in any order.
        failed = [e for e in everything if e.failed]
        order = [e for e in everything if not e.failed] + rng.sample(failed, len(failed))
    else:
        order = rng.sample(everything, len(everything))
    radius = view_radius_ms(DEFAULT_RULES[anomaly_type])
    arrived: list[WindowEntry] = []
    pieces: list[Finding] = []
    position = 0
    while position < len(order):
        batch = order[position : position + rng.randint(1, 6)]
        position += len(batch)
        arrived = sorted(arrived + batch)
        lo = min(e.timestamp for e in batch) - radius
        hi = max(e.timestamp for e in batch) + radius
        view = [e for e in arrived if lo <= e.timestamp <= hi]
        pieces += episodes_of(anomaly_type, view, sorted(e.timestamp for e in batch))
    merged = findings_merge(pieces)
    assert [(f.start_ms, f.end_ms, f.value) for f in merged] == [(f.start_ms, f.end_ms, f.value) for f in truth]
