"""The anomaly rules of docs/design.md: pure decisions, no I/O.

The windows live in Redis (`windows.py`) and episodes are found in `detection.py`; these
functions only say whether a value breaks a rule, and how to say so in one sentence.
Every number a rule uses comes from its `RuleSettings`, so an analyst's change to a
threshold or a window in the admin changes the decision and nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any


class Comparison(Enum):
    MORE_THAN = ">"
    AT_LEAST = ">="


@dataclass(frozen=True)
class RuleSettings:
    """One rule as an analyst tunes it. `window_seconds` 0 means the rule looks at one event."""

    anomaly_type: str
    threshold: float
    window_seconds: int
    severity: str
    comparison: Comparison
    enabled: bool = True


HIGH_FREQUENCY_LOGIN = "high_frequency_login"
REPEATED_LOGIN_FAILURES = "repeated_login_failures"
HIGH_VALUE_PURCHASE = "high_value_purchase"
RAPID_SUCCESSIVE_PURCHASES = "rapid_successive_purchases"
HIGH_API_FAILURE_RATE = "high_api_failure_rate"
UNUSUAL_TIME_ACTIVITY = "unusual_time_activity"
UNUSUAL_LOCATION_LOGIN = "unusual_location_login"

# docs/design.md, "Anomaly rules". For unusual_time_activity the threshold is the first quiet
# hour (UTC) and the window the length of the quiet period: 02:00 to 04:59. For
# repeated_login_failures the window bounds a run: the failures in a row that count are
# those within 15 minutes of the latest (a guess spread over a day is not a burst).
DEFAULT_RULES: dict[str, RuleSettings] = {
    rule.anomaly_type: rule
    for rule in [
        RuleSettings(HIGH_FREQUENCY_LOGIN, 10, 60, "medium", Comparison.MORE_THAN),
        RuleSettings(REPEATED_LOGIN_FAILURES, 3, 900, "high", Comparison.AT_LEAST),
        RuleSettings(HIGH_VALUE_PURCHASE, 1000, 0, "medium", Comparison.MORE_THAN),
        RuleSettings(RAPID_SUCCESSIVE_PURCHASES, 5, 3600, "medium", Comparison.AT_LEAST),
        RuleSettings(HIGH_API_FAILURE_RATE, 5, 60, "high", Comparison.AT_LEAST),
        RuleSettings(UNUSUAL_TIME_ACTIVITY, 2, 3 * 3600, "low", Comparison.AT_LEAST),
        RuleSettings(UNUSUAL_LOCATION_LOGIN, 1, 0, "high", Comparison.AT_LEAST),
    ]
}

# The windows a user's events are kept in, one per kind of counted event, and the rules
# that read each: `window_of` is the one place that decides which event goes where.
LOGIN = "login"
PURCHASE = "purchase"
API_FAILURE = "api_failure"
RULES_BY_WINDOW: dict[str, tuple[str, ...]] = {
    LOGIN: (HIGH_FREQUENCY_LOGIN, REPEATED_LOGIN_FAILURES),
    PURCHASE: (RAPID_SUCCESSIVE_PURCHASES,),
    API_FAILURE: (HIGH_API_FAILURE_RATE,),
}
# The signal types that can go into a window.
WINDOWED_SIGNAL_TYPES = ("login", "purchase", "api_call")


def window_of(signal_type: str, payload: dict[str, Any]) -> str | None:
    """The window an event is counted in, or None when no counting rule reads it."""
    if signal_type == "login":
        return LOGIN
    if signal_type == "purchase":
        return PURCHASE
    if is_api_failure(signal_type, payload):
        return API_FAILURE
    return None


def is_failed_login(signal_type: str, payload: dict[str, Any]) -> bool:
    """A login that did not succeed: what repeated_login_failures counts in a row."""
    return signal_type == "login" and not payload["success"]


# What a counting rule counts, in words, for its description.
_COUNTED = {
    HIGH_FREQUENCY_LOGIN: "logins",
    RAPID_SUCCESSIVE_PURCHASES: "purchases",
    HIGH_API_FAILURE_RATE: "failed API calls (status 500 or more)",
}


def breaks(rule: RuleSettings, value: float) -> bool:
    """Whether a measured value (a count, an amount, a streak) breaks the rule's threshold."""
    if rule.comparison is Comparison.MORE_THAN:
        return value > rule.threshold
    return value >= rule.threshold


def fewest_to_break(rule: RuleSettings) -> int:
    """The fewest events a counting rule needs to see before it can break: below this, a
    window need not be looked at."""
    if rule.comparison is Comparison.MORE_THAN:
        return math.floor(rule.threshold) + 1
    return max(math.ceil(rule.threshold), 1)


def is_api_failure(signal_type: str, payload: dict[str, Any]) -> bool:
    """A server-side failure: status 500 or more. 499 (client closed) is not one."""
    return signal_type == "api_call" and payload["status_code"] >= 500


def in_quiet_hours(rule: RuleSettings, timestamp_ms: int) -> bool:
    """Whether an event falls in the rule's quiet period, by UTC time of day."""
    seconds_into_day = (timestamp_ms // 1000) % 86_400  # UTC has no leap seconds in epoch time
    start = int(rule.threshold * 3600)
    return (seconds_into_day - start) % 86_400 < rule.window_seconds  # may run past midnight


def describe(rule: RuleSettings, value: float, detail: str = "") -> str:
    """One readable sentence: what was seen against what the rule allows."""
    threshold = _number(rule.threshold)
    if rule.anomaly_type in _COUNTED:
        return f"{_number(value)} {_COUNTED[rule.anomaly_type]} in {rule.window_seconds} s, threshold {threshold}"
    if rule.anomaly_type == REPEATED_LOGIN_FAILURES:
        return f"{_number(value)} failed logins in a row, threshold {threshold}"
    if rule.anomaly_type == HIGH_VALUE_PURCHASE:
        return f"purchase of {value:.2f}, threshold {threshold}"
    if rule.anomaly_type == UNUSUAL_TIME_ACTIVITY:
        return f"activity at {detail} UTC, quiet hours {_quiet_hours(rule)}"
    if rule.anomaly_type == UNUSUAL_LOCATION_LOGIN:
        return f"successful login from {detail}, never seen for this user"
    raise ValueError(f"unknown anomaly type {rule.anomaly_type!r}")


_COMPARISON_WORDS = {Comparison.MORE_THAN: "more than", Comparison.AT_LEAST: "at least"}


def rule_in_words(rule: RuleSettings) -> str:
    """What breaks the rule, as a person reads it next to an anomaly's evidence: the
    threshold, the window and how the two compare, in one phrase."""
    threshold = f"{_COMPARISON_WORDS[rule.comparison]} {_number(rule.threshold)}"
    if rule.anomaly_type in _COUNTED:
        return f"{threshold} {_COUNTED[rule.anomaly_type]} within {rule.window_seconds} s"
    if rule.anomaly_type == REPEATED_LOGIN_FAILURES:
        return f"{threshold} failed logins in a row, each within {rule.window_seconds} s of the latest"
    if rule.anomaly_type == HIGH_VALUE_PURCHASE:
        return f"a purchase of {threshold}"
    if rule.anomaly_type == UNUSUAL_TIME_ACTIVITY:
        return f"any event in the quiet hours, {_quiet_hours(rule)} UTC"
    if rule.anomaly_type == UNUSUAL_LOCATION_LOGIN:
        return "a successful login from a place that is not one of the user's known places"
    raise ValueError(f"unknown anomaly type {rule.anomaly_type!r}")


def value_in_words(rule: RuleSettings, value: float, detail: str = "") -> str:
    """What was seen against what the rule allows: the count or the amount, and the most
    the rule lets through (counts are whole, so "more than 10" allows at most 10 and "at
    least 5" at most 4). The two rules that count nothing say what happened instead."""
    if rule.anomaly_type in _COUNTED:
        seen = f"{_number(value)} {_COUNTED[rule.anomaly_type]} within {rule.window_seconds} s"
    elif rule.anomaly_type == REPEATED_LOGIN_FAILURES:
        seen = f"{_number(value)} failed logins in a row"
    elif rule.anomaly_type == HIGH_VALUE_PURCHASE:
        allowed = "at most" if rule.comparison is Comparison.MORE_THAN else "less than"
        return f"a purchase of {value:.2f}, where the rule allows {allowed} {_number(rule.threshold)}"
    else:
        return describe(rule, value, detail)
    return f"{seen}, where the rule allows at most {fewest_to_break(rule) - 1}"


def _quiet_hours(rule: RuleSettings) -> str:
    start = int(rule.threshold)
    end_minute = int(rule.threshold * 60 + rule.window_seconds // 60) - 1
    return f"{start:02d}:00-{end_minute // 60:02d}:{end_minute % 60:02d}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
