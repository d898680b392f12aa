"""The anomaly rules at their edges (DESIGN.md "Anomaly rules"), as pure decisions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

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
    breaks,
    count_in_window,
    counted_by,
    describe,
    failure_streak,
    in_quiet_hours,
    is_api_failure,
    is_new_location,
)
from tests.factories import PAYLOADS

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def logins_in(count: int, span_ms: int) -> int:
    """How many logins the window ending at the last of `count` logins spread over `span_ms` holds."""
    timestamps = [T0 + (span_ms * i) // max(count - 1, 1) for i in range(count)]
    return count_in_window(timestamps, timestamps[-1], DEFAULT_RULES[HIGH_FREQUENCY_LOGIN].window_seconds)


@pytest.mark.parametrize(("count", "anomaly"), [(10, False), (11, True)])
def test_high_frequency_login_is_more_than_10_logins_within_60_s(count: int, anomaly: bool) -> None:
    assert breaks(DEFAULT_RULES[HIGH_FREQUENCY_LOGIN], logins_in(count, span_ms=59_000)) is anomaly


def test_the_login_window_includes_both_ends_and_nothing_older() -> None:
    assert logins_in(11, span_ms=60_000) == 11
    assert count_in_window([T0, T0 + 60_001], T0 + 60_001, 60) == 1


def test_repeated_login_failures_are_a_sequence_a_success_resets() -> None:
    rule = DEFAULT_RULES[REPEATED_LOGIN_FAILURES]
    failed = {**PAYLOADS["login"], "success": False}
    succeeded = {**PAYLOADS["login"], "success": True}
    streak = 0
    for payload in (failed, failed, succeeded, failed):
        streak = failure_streak(streak, "login", payload)
    assert (streak, breaks(rule, streak)) == (1, False)
    for _ in range(2):
        streak = failure_streak(streak, "login", failed)
    assert (streak, breaks(rule, streak)) == (3, True)
    assert failure_streak(streak, "click", PAYLOADS["click"]) == 3


@pytest.mark.parametrize(("amount", "anomaly"), [(1000, False), (1000.00, False), (1000.01, True), (5000, True)])
def test_high_value_purchase_is_an_amount_above_1000(amount: float, anomaly: bool) -> None:
    assert breaks(DEFAULT_RULES[HIGH_VALUE_PURCHASE], amount) is anomaly


@pytest.mark.parametrize(("count", "anomaly"), [(4, False), (5, True)])
def test_rapid_successive_purchases_are_5_or_more_within_an_hour(count: int, anomaly: bool) -> None:
    rule = DEFAULT_RULES[RAPID_SUCCESSIVE_PURCHASES]
    timestamps = [T0 + i * 600_000 for i in range(count)]
    assert breaks(rule, count_in_window(timestamps, timestamps[-1], rule.window_seconds)) is anomaly


def test_five_purchases_over_more_than_an_hour_are_not_rapid() -> None:
    rule = DEFAULT_RULES[RAPID_SUCCESSIVE_PURCHASES]
    timestamps = [T0 + i * 900_001 for i in range(5)]
    assert not breaks(rule, count_in_window(timestamps, timestamps[-1], rule.window_seconds))


@pytest.mark.parametrize(("status", "failure"), [(200, False), (499, False), (500, True), (503, True)])
def test_an_api_failure_is_a_status_of_500_or_more(status: int, failure: bool) -> None:
    payload = {**PAYLOADS["api_call"], "status_code": status}
    assert is_api_failure("api_call", payload) is failure
    assert counted_by(HIGH_API_FAILURE_RATE, "api_call", payload) is failure


@pytest.mark.parametrize(("count", "anomaly"), [(4, False), (5, True)])
def test_high_api_failure_rate_is_5_or_more_failures_within_60_s(count: int, anomaly: bool) -> None:
    assert breaks(DEFAULT_RULES[HIGH_API_FAILURE_RATE], count) is anomaly


def test_what_each_counting_rule_counts() -> None:
    assert counted_by(HIGH_FREQUENCY_LOGIN, "login", PAYLOADS["login"])
    assert not counted_by(HIGH_FREQUENCY_LOGIN, "click", PAYLOADS["click"])
    assert counted_by(RAPID_SUCCESSIVE_PURCHASES, "purchase", PAYLOADS["purchase"])
    assert not counted_by(HIGH_VALUE_PURCHASE, "purchase", PAYLOADS["purchase"])


@pytest.mark.parametrize(
    ("moment", "quiet"),
    [
        ("01:59:59", False),
        ("02:00:00", True),
        ("03:30:00", True),
        ("04:59:59", True),
        ("05:00:00", False),
        ("14:00:00", False),
    ],
)
def test_unusual_time_activity_is_between_02_00_and_04_59_utc(moment: str, quiet: bool) -> None:
    hour, minute, second = (int(part) for part in moment.split(":"))
    timestamp = int(datetime(2026, 3, 1, hour, minute, second, tzinfo=UTC).timestamp() * 1000)
    assert in_quiet_hours(DEFAULT_RULES[UNUSUAL_TIME_ACTIVITY], timestamp) is quiet


def test_unusual_location_is_a_successful_login_from_a_place_never_seen() -> None:
    login = {**PAYLOADS["login"], "location": "Lagos, NG"}
    assert is_new_location("login", login, {"Berlin, DE"})
    assert not is_new_location("login", login, {"Berlin, DE", "Lagos, NG"})
    assert not is_new_location("login", {**login, "success": False}, {"Berlin, DE"})
    assert not is_new_location("login", login, set()), "a first login has nothing to compare with"


def test_a_changed_threshold_changes_the_decision() -> None:
    rule = replace(DEFAULT_RULES[HIGH_FREQUENCY_LOGIN], threshold=20)
    assert not breaks(rule, 11)
    assert breaks(rule, 21)


def test_descriptions_say_what_was_seen_against_the_threshold() -> None:
    assert describe(DEFAULT_RULES[HIGH_FREQUENCY_LOGIN], 12) == "12 logins in 60 s, threshold 10"
    assert describe(DEFAULT_RULES[REPEATED_LOGIN_FAILURES], 3) == "3 failed logins in a row, threshold 3"
    assert describe(DEFAULT_RULES[HIGH_VALUE_PURCHASE], 1000.01) == "purchase of 1000.01, threshold 1000"
    assert describe(DEFAULT_RULES[RAPID_SUCCESSIVE_PURCHASES], 5) == "5 purchases in 3600 s, threshold 5"
    assert describe(DEFAULT_RULES[UNUSUAL_TIME_ACTIVITY], 1, "03:12") == (
        "activity at 03:12 UTC, quiet hours 02:00-04:59"
    )
    assert describe(DEFAULT_RULES[UNUSUAL_LOCATION_LOGIN], 1, "Lagos, NG") == (
        "successful login from Lagos, NG, never seen for this user"
    )


def test_every_rule_of_the_design_has_defaults() -> None:
    assert {rule.severity for rule in DEFAULT_RULES.values()} <= {"low", "medium", "high"}
    assert set(DEFAULT_RULES) == {
        HIGH_FREQUENCY_LOGIN,
        REPEATED_LOGIN_FAILURES,
        HIGH_VALUE_PURCHASE,
        RAPID_SUCCESSIVE_PURCHASES,
        HIGH_API_FAILURE_RATE,
        UNUSUAL_TIME_ACTIVITY,
        UNUSUAL_LOCATION_LOGIN,
    }
