"""The anomaly rules at their edges (docs/design.md, "Anomaly rules"), as pure decisions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from anomalies_app.rules import (
    API_FAILURE,
    DEFAULT_RULES,
    HIGH_API_FAILURE_RATE,
    HIGH_FREQUENCY_LOGIN,
    HIGH_VALUE_PURCHASE,
    LOGIN,
    PURCHASE,
    RAPID_SUCCESSIVE_PURCHASES,
    REPEATED_LOGIN_FAILURES,
    RULES_BY_WINDOW,
    UNUSUAL_LOCATION_LOGIN,
    UNUSUAL_TIME_ACTIVITY,
    WINDOWED_SIGNAL_TYPES,
    breaks,
    describe,
    fewest_to_break,
    in_quiet_hours,
    is_api_failure,
    window_of,
)
from signals_app.messages import SIGNAL_TYPES
from tests.factories import PAYLOADS


@pytest.mark.parametrize(("amount", "anomaly"), [(1000, False), (1000.00, False), (1000.01, True), (5000, True)])
def test_high_value_purchase_is_an_amount_above_1000(amount: float, anomaly: bool) -> None:
    assert breaks(DEFAULT_RULES[HIGH_VALUE_PURCHASE], amount) is anomaly


@pytest.mark.parametrize(("status", "failure"), [(200, False), (499, False), (500, True), (503, True)])
def test_an_api_failure_is_a_status_of_500_or_more(status: int, failure: bool) -> None:
    payload = {**PAYLOADS["api_call"], "status_code": status}
    assert is_api_failure("api_call", payload) is failure
    assert (window_of("api_call", payload) == API_FAILURE) is failure


@pytest.mark.parametrize(("count", "anomaly"), [(4, False), (5, True)])
def test_high_api_failure_rate_is_5_or_more_failures_within_60_s(count: int, anomaly: bool) -> None:
    assert breaks(DEFAULT_RULES[HIGH_API_FAILURE_RATE], count) is anomaly


@pytest.mark.parametrize("signal_type", sorted(PAYLOADS))
def test_what_each_counting_rule_counts(signal_type: str) -> None:
    failed_call = {**PAYLOADS["api_call"], "status_code": 500}
    windows = {"login": LOGIN, "purchase": PURCHASE, "api_call": None, "click": None, "file_access": None}
    assert window_of(signal_type, PAYLOADS[signal_type]) == windows[signal_type]
    assert window_of("api_call", failed_call) == API_FAILURE
    assert RULES_BY_WINDOW == {
        LOGIN: (HIGH_FREQUENCY_LOGIN, REPEATED_LOGIN_FAILURES),
        PURCHASE: (RAPID_SUCCESSIVE_PURCHASES,),
        API_FAILURE: (HIGH_API_FAILURE_RATE,),
    }
    assert HIGH_VALUE_PURCHASE not in {rule for rules in RULES_BY_WINDOW.values() for rule in rules}


def test_the_windowed_types_are_exactly_those_window_of_can_choose() -> None:
    """The refill from PostgreSQL and the batch read only these types: a window that
    `window_of` gave another type would never be counted."""
    payloads = {**PAYLOADS, "api_call": {**PAYLOADS["api_call"], "status_code": 503}}
    assert {t for t in SIGNAL_TYPES if window_of(t, payloads[t]) is not None} == set(WINDOWED_SIGNAL_TYPES)


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


def test_the_fewest_events_that_can_break_a_counting_rule() -> None:
    assert fewest_to_break(DEFAULT_RULES[HIGH_FREQUENCY_LOGIN]) == 11
    assert fewest_to_break(DEFAULT_RULES[RAPID_SUCCESSIVE_PURCHASES]) == 5
    assert fewest_to_break(replace(DEFAULT_RULES[HIGH_FREQUENCY_LOGIN], threshold=10.5)) == 11
