"""Ground truth for detection: known anomalies woven into clean traffic. Pure, no I/O.

`ScenarioWeaver` wraps a clean `SignalGenerator` (whose traffic breaks no rule) and, every
`every` background events, starts a scenario on a user of its own: one episode of one of
the seven rules, or a near miss that must raise nothing (10 logins in a minute, an amount
of exactly 1000, ...). Each scenario's events are spread over at most a minute of event
time from the moment it starts and come out in event-time order among the background
events, like a real user's would; a quiet-hours scenario's events belong to the last
quiet period before the run, so they arrive late, as a delayed client's would.
"""

from __future__ import annotations

import heapq
import random
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from anomalies_app.rules import (
    HIGH_API_FAILURE_RATE,
    HIGH_FREQUENCY_LOGIN,
    HIGH_VALUE_PURCHASE,
    RAPID_SUCCESSIVE_PURCHASES,
    REPEATED_LOGIN_FAILURES,
    UNUSUAL_LOCATION_LOGIN,
    UNUSUAL_TIME_ACTIVITY,
    RuleSettings,
)
from emitter.generator import LOCATIONS, Event, SignalGenerator, home_ip_address, home_location
from signals_app.messages import ms_to_datetime

# Scenario kinds in the order they take turns: each anomaly, then each near miss.
ANOMALY_KINDS = (
    HIGH_FREQUENCY_LOGIN,
    REPEATED_LOGIN_FAILURES,
    HIGH_VALUE_PURCHASE,
    RAPID_SUCCESSIVE_PURCHASES,
    HIGH_API_FAILURE_RATE,
    UNUSUAL_TIME_ACTIVITY,
    UNUSUAL_LOCATION_LOGIN,
)
NEAR_MISS_KINDS = (
    "10_logins_in_a_minute",
    "failures_broken_by_a_success",
    "purchase_of_exactly_1000",
    "4_purchases_in_a_minute",
    "4_server_errors_and_client_errors",
    "activity_just_outside_quiet_hours",
    "second_login_from_home",
)


@dataclass(frozen=True)
class Scenario:
    kind: str
    user_id: int
    # The rule it must raise, once; None for a near miss.
    anomaly_type: str | None
    first_ms: int
    last_ms: int
    events: int


def quiet_period_before(rule: RuleSettings, moment_ms: int) -> tuple[int, int]:
    """The last complete quiet period (start, end) in ms that ended at or before `moment_ms`."""
    moment = ms_to_datetime(moment_ms)
    start = moment.replace(hour=int(rule.threshold), minute=0, second=0, microsecond=0)
    while start + timedelta(seconds=rule.window_seconds) > moment:
        start -= timedelta(days=1)
    start_ms = int(start.timestamp() * 1000)
    return start_ms, start_ms + rule.window_seconds * 1000


def clean_start_ms(rule: RuleSettings, now_ms: int, span_ms: int) -> int:
    """A start for a run of `span_ms` (plus two minutes for the last scenarios) that keeps
    every event time out of the quiet hours: now, or else just before the quiet period
    the run would run into."""
    needed = span_ms + 120_000
    midnight = ms_to_datetime(now_ms).replace(hour=0, minute=0, second=0, microsecond=0)
    for days in (-1, 0, 1):
        quiet_start = int((midnight + timedelta(days=days, hours=int(rule.threshold))).timestamp() * 1000)
        if now_ms < quiet_start + rule.window_seconds * 1000 and now_ms + needed > quiet_start:
            return quiet_start - needed
    return now_ms


@dataclass
class ScenarioWeaver:
    background: SignalGenerator
    quiet_rule: RuleSettings
    first_user_id: int
    every: int
    seed: int | None = None
    scenarios: list[Scenario] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Not the background's sequence: the same seed there would repeat its event ids.
        self.rng = random.Random(None if self.seed is None else f"scenarios-{self.seed}")
        self.pending: list[tuple[int, int, Event]] = []  # (timestamp, sequence, event)
        self.sequence = 0
        self.background_emitted = 0
        self.next_scenario_at = 0  # background event count at which the next scenario starts
        self.next_user_id = self.first_user_id
        self.builders = {
            HIGH_FREQUENCY_LOGIN: self._high_frequency_login,
            REPEATED_LOGIN_FAILURES: self._repeated_login_failures,
            HIGH_VALUE_PURCHASE: self._high_value_purchase,
            RAPID_SUCCESSIVE_PURCHASES: self._rapid_successive_purchases,
            HIGH_API_FAILURE_RATE: self._high_api_failure_rate,
            UNUSUAL_TIME_ACTIVITY: self._unusual_time_activity,
            UNUSUAL_LOCATION_LOGIN: self._unusual_location_login,
            "10_logins_in_a_minute": self._ten_logins_in_a_minute,
            "failures_broken_by_a_success": self._failures_broken_by_a_success,
            "purchase_of_exactly_1000": self._purchase_of_exactly_1000,
            "4_purchases_in_a_minute": self._four_purchases_in_a_minute,
            "4_server_errors_and_client_errors": self._four_server_errors_and_client_errors,
            "activity_just_outside_quiet_hours": self._activity_just_outside_quiet_hours,
            "second_login_from_home": self._second_login_from_home,
        }

    def rate_change(self, rate: float) -> None:
        self.background.rate_change(rate)

    def next(self) -> Event:
        upcoming = self.background.timestamp(self.background.emitted)
        if self.background_emitted >= self.next_scenario_at:
            self.next_scenario_at += self.every
            self.scenario_start(upcoming)
        if self.pending and self.pending[0][0] <= upcoming:
            return heapq.heappop(self.pending)[2]
        self.background_emitted += 1
        return self.background.next()

    def leftover(self) -> list[Event]:
        """Scenario events still waiting when the run ends: they must go out too."""
        events = [event for _, _, event in sorted(self.pending)]
        self.pending.clear()
        return events

    def scenario_start(self, at_ms: int) -> None:
        kinds = ANOMALY_KINDS + NEAR_MISS_KINDS
        kind = kinds[len(self.scenarios) % len(kinds)]
        user_id = self.next_user_id
        self.next_user_id += 1
        events = self.builders[kind](user_id, at_ms)
        for event in events:
            self.sequence += 1
            heapq.heappush(self.pending, (event["timestamp"], self.sequence, event))
        times = [event["timestamp"] for event in events]
        self.scenarios.append(
            Scenario(
                kind=kind,
                user_id=user_id,
                anomaly_type=kind if kind in ANOMALY_KINDS else None,
                first_ms=min(times),
                last_ms=max(times),
                events=len(events),
            )
        )

    # --- the scenarios ----------------------------------------------------------------
    def _event(self, user_id: int, at_ms: int, signal_type: str, payload: dict[str, Any]) -> Event:
        return {
            "event_id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            "user_id": user_id,
            "type": signal_type,
            "timestamp": at_ms,
            "payload": payload,
        }

    def _login(self, user_id: int, at_ms: int, *, success: bool = True, location: str | None = None) -> Event:
        payload = {
            "login_method": "password",
            "success": success,
            "location": location or home_location(user_id),
            "ip_address": home_ip_address(user_id),
        }
        return self._event(user_id, at_ms, "login", payload)

    def _purchase(self, user_id: int, at_ms: int, amount: float) -> Event:
        payload = {"amount": amount, "currency": "USD", "product_id": "SKU-00042", "payment_method": "credit_card"}
        return self._event(user_id, at_ms, "purchase", payload)

    def _api_call(self, user_id: int, at_ms: int, status: int) -> Event:
        payload = {"endpoint": "/api/v1/orders", "method": "GET", "status_code": status, "response_time_ms": 80}
        return self._event(user_id, at_ms, "api_call", payload)

    def _click(self, user_id: int, at_ms: int) -> Event:
        return self._event(user_id, at_ms, "click", {"page": "/", "element": "nav-link"})

    def _spread(self, at_ms: int, count: int, longest_ms: int) -> list[int]:
        span = self.rng.randint(count * 100, longest_ms)
        return [at_ms + span * i // max(count - 1, 1) for i in range(count)]

    def _high_frequency_login(self, user_id: int, at_ms: int) -> list[Event]:
        return [self._login(user_id, t) for t in self._spread(at_ms, self.rng.randint(11, 15), 55_000)]

    def _repeated_login_failures(self, user_id: int, at_ms: int) -> list[Event]:
        times = self._spread(at_ms, self.rng.randint(3, 5), 60_000)
        return [self._login(user_id, t, success=False) for t in times]

    def _high_value_purchase(self, user_id: int, at_ms: int) -> list[Event]:
        return [self._purchase(user_id, at_ms, round(self.rng.uniform(1000.01, 5000), 2))]

    def _rapid_successive_purchases(self, user_id: int, at_ms: int) -> list[Event]:
        times = self._spread(at_ms, self.rng.randint(5, 7), 60_000)
        return [self._purchase(user_id, t, round(self.rng.uniform(5, 500), 2)) for t in times]

    def _high_api_failure_rate(self, user_id: int, at_ms: int) -> list[Event]:
        times = self._spread(at_ms, self.rng.randint(5, 8), 55_000)
        return [self._api_call(user_id, t, self.rng.choice([500, 502, 503, 504])) for t in times]

    def _unusual_time_activity(self, user_id: int, at_ms: int) -> list[Event]:
        start, end = quiet_period_before(self.quiet_rule, self.background.clock_ms)
        return [self._click(user_id, self.rng.randrange(start, end)) for _ in range(self.rng.randint(1, 3))]

    def _unusual_location_login(self, user_id: int, at_ms: int) -> list[Event]:
        home = home_location(user_id)
        times = self._spread(at_ms, self.rng.randint(2, 4), 30_000)
        away = self.rng.choice([place for place in LOCATIONS if place != home])
        return [self._login(user_id, t) for t in times[:-1]] + [self._login(user_id, times[-1], location=away)]

    # Near misses: each one step short of its rule.
    def _ten_logins_in_a_minute(self, user_id: int, at_ms: int) -> list[Event]:
        return [self._login(user_id, t) for t in self._spread(at_ms, 10, 59_000)]

    def _failures_broken_by_a_success(self, user_id: int, at_ms: int) -> list[Event]:
        times = self._spread(at_ms, 4, 30_000)
        return [self._login(user_id, t, success=i == 2) for i, t in enumerate(times)]

    def _purchase_of_exactly_1000(self, user_id: int, at_ms: int) -> list[Event]:
        return [self._purchase(user_id, at_ms, 1000.0)]

    def _four_purchases_in_a_minute(self, user_id: int, at_ms: int) -> list[Event]:
        return [self._purchase(user_id, t, 99.0) for t in self._spread(at_ms, 4, 60_000)]

    def _four_server_errors_and_client_errors(self, user_id: int, at_ms: int) -> list[Event]:
        times = self._spread(at_ms, 7, 50_000)
        return [self._api_call(user_id, t, 503 if i % 2 == 0 else 499) for i, t in enumerate(times)]

    def _activity_just_outside_quiet_hours(self, user_id: int, at_ms: int) -> list[Event]:
        start, end = quiet_period_before(self.quiet_rule, self.background.clock_ms)
        return [self._click(user_id, start - 1_000), self._click(user_id, end)]

    def _second_login_from_home(self, user_id: int, at_ms: int) -> list[Event]:
        return [self._login(user_id, t) for t in self._spread(at_ms, 2, 30_000)]
