"""From what a user's windows hold to the anomalies they show: pure, no I/O.

An anomaly is one *episode*: the stretch of event time during which a rule's condition
holds for a user without a break. Episodes are a function of the set of events alone, not
of the order they arrived in, which is what makes detection safe to run twice, out of
order, or on two workers at once:

- For a counting rule, a *breaking point* is an event time at which the window ending
  there breaks the threshold. Two breaking points belong to the same episode when no
  non-breaking event lies between them and the condition still held the millisecond
  before the later one (so it never cleared in between).
- Adding events only raises counts, so every breaking point and every link between two of
  them that a partial view shows is also there in the full picture: what a worker finds
  from a partial window is always a piece of a true episode. The database merges pieces
  that overlap (`finding_merge`), and the last event of an episode to arrive sees its
  pieces joined, so in the end each episode is one anomaly.
- A view must reach `view_radius_ms` either side of the events it judges: the links that
  an event can change lie within two windows of it.

The exception is a late *success* between failed logins, which splits a run of failures
after the fact: services.py re-reads the runs under the user's lock and withdraws an
anomaly raised for a run that is no longer there (unless an analyst is on it).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import NamedTuple

from anomalies_app.rules import (
    UNUSUAL_LOCATION_LOGIN,
    UNUSUAL_TIME_ACTIVITY,
    RuleSettings,
    breaks,
    in_quiet_hours,
)
from signals_app.messages import ms_to_datetime

# Evidence lists at most this many event ids (the count says how many there were).
EVIDENCE_MAX_EVENTS = 100


class WindowEntry(NamedTuple):
    """An event as a window keeps it. `failed` only matters for logins."""

    timestamp: int
    event_id: str
    failed: bool = False


@dataclass(frozen=True)
class Finding:
    """A piece of an episode, with the evidence of its strongest moment.

    Keyed findings (`key` not empty: one purchase, one location, one night) are the same
    episode when their keys are equal; the others when their spans overlap.
    """

    user_id: int
    anomaly_type: str
    start_ms: int
    end_ms: int
    value: float
    window_start_ms: int
    window_end_ms: int
    event_ids: tuple[str, ...]
    key: str = ""

    def same_episode(self, other: Finding) -> bool:
        if (self.user_id, self.anomaly_type, self.key) != (other.user_id, other.anomaly_type, other.key):
            return False
        return bool(self.key) or (self.start_ms <= other.end_ms and other.start_ms <= self.end_ms)

    def strength(self) -> tuple[float, int, int]:
        """Orders evidence: the highest value wins, then the earliest."""
        return (-self.value, self.window_end_ms, self.start_ms)


def finding_merge(first: Finding, second: Finding) -> Finding:
    """One finding for two pieces of the same episode: the union of their spans, with the
    evidence of the stronger. Commutative and idempotent, so the order pieces arrive in
    (and how often) does not change the result."""
    strongest = min(first, second, key=Finding.strength)
    return replace(
        strongest,
        start_ms=min(first.start_ms, second.start_ms),
        end_ms=max(first.end_ms, second.end_ms),
    )


def findings_merge(findings: Iterable[Finding]) -> list[Finding]:
    """Merge findings of the same episodes (a batch often holds several pieces of one)."""
    merged: list[Finding] = []
    for finding in sorted(findings, key=lambda f: (f.user_id, f.anomaly_type, f.key, f.start_ms)):
        if merged and merged[-1].same_episode(finding):
            merged[-1] = finding_merge(merged[-1], finding)
        else:
            merged.append(finding)
    return merged


def view_radius_ms(rule: RuleSettings) -> int:
    """How far either side of an event a view must reach to judge what the event changes."""
    return 2 * rule.window_seconds * 1000 + 1


def count_episodes(
    rule: RuleSettings, user_id: int, entries: Sequence[WindowEntry], added_at: Sequence[int]
) -> list[Finding]:
    """Episodes of a counting rule among `entries` (one contiguous stretch of the user's
    window, sorted) that the events added at times `added_at` could have changed."""
    window_ms = rule.window_seconds * 1000
    times = [entry.timestamp for entry in entries]

    def count(start: int, end: int) -> int:
        return bisect_right(times, end) - bisect_left(times, start)

    runs: list[list[tuple[int, int]]] = []  # (breaking time, count there)
    current: list[tuple[int, int]] = []
    for moment in sorted(set(times)):
        seen = count(moment - window_ms, moment)
        if not breaks(rule, seen):
            if current:
                runs.append(current)
                current = []
            continue
        held_before = breaks(rule, count(moment - 1 - window_ms, moment - 1))
        if current and not held_before:
            runs.append(current)
            current = []
        current.append((moment, seen))
    if current:
        runs.append(current)

    findings = []
    for run in runs:
        if not _any_within(added_at, run[0][0] - window_ms - 1, run[-1][0]):
            continue
        peak_time, peak_count = min(run, key=lambda point: (-point[1], point[0]))
        in_peak = entries[bisect_left(times, peak_time - window_ms) : bisect_right(times, peak_time)]
        findings.append(
            Finding(
                user_id=user_id,
                anomaly_type=rule.anomaly_type,
                start_ms=run[0][0],
                end_ms=run[-1][0],
                value=peak_count,
                window_start_ms=peak_time - window_ms,
                window_end_ms=peak_time,
                event_ids=_evidence(in_peak),
            )
        )
    return findings


def failure_episodes(
    rule: RuleSettings, user_id: int, logins: Sequence[WindowEntry], added_at: Sequence[int]
) -> list[Finding]:
    """Runs of failed logins in a row (by event time; a success in between resets), where
    the failures of the run within `window_seconds` reach the threshold."""
    window_ms = rule.window_seconds * 1000
    ordered = sorted(logins)
    times = [login.timestamp for login in ordered]
    findings = []
    run_start = 0  # index of the first failure since the last success
    episode: list[int] = []  # indices of the breaking failures of the current episode
    peak = (0, 0)  # (failures, index)

    def close() -> None:
        nonlocal episode, peak
        if episode:
            first_failure = _first_within(times, run_start, episode[0], window_ms)
            span = ordered[first_failure : episode[-1] + 1]
            if _any_within(added_at, span[0].timestamp - window_ms, span[-1].timestamp + window_ms):
                peak_index = peak[1]
                peak_first = _first_within(times, run_start, peak_index, window_ms)
                findings.append(
                    Finding(
                        user_id=user_id,
                        anomaly_type=rule.anomaly_type,
                        start_ms=span[0].timestamp,
                        end_ms=span[-1].timestamp,
                        value=peak[0],
                        window_start_ms=ordered[peak_first].timestamp,
                        window_end_ms=ordered[peak_index].timestamp,
                        event_ids=_evidence(span),
                    )
                )
        episode = []
        peak = (0, 0)

    for index, login in enumerate(ordered):
        if not login.failed:
            close()
            run_start = index + 1
            continue
        failures = index - _first_within(times, run_start, index, window_ms) + 1
        if breaks(rule, failures):
            episode.append(index)
            if failures > peak[0]:
                peak = (failures, index)
        else:
            close()
    close()
    return findings


def high_value_finding(rule: RuleSettings, user_id: int, event: WindowEntry, amount: float) -> Finding | None:
    """Each purchase above the threshold is its own anomaly."""
    if not breaks(rule, amount):
        return None
    return _single(rule, user_id, event, value=amount, key=event.event_id)


def quiet_hours_finding(rule: RuleSettings, user_id: int, event: WindowEntry) -> Finding | None:
    """Activity in the quiet hours: one anomaly per user and night, however many events."""
    if not in_quiet_hours(rule, event.timestamp):
        return None
    return _single(rule, user_id, event, value=1, key=quiet_period_of(rule, event.timestamp))


def quiet_period_of(rule: RuleSettings, timestamp_ms: int) -> str:
    """The date (UTC) on which the quiet period holding `timestamp_ms` began."""
    moment = ms_to_datetime(timestamp_ms)
    day = moment.date()
    if moment.hour < int(rule.threshold):
        day -= timedelta(days=1)  # a quiet period that began the evening before
    return day.isoformat()


def new_location_findings(
    rule: RuleSettings,
    user_id: int,
    first_logins: dict[str, WindowEntry],
    batch_event_ids: set[str],
    vouched: frozenset[str] = frozenset(),
) -> list[Finding]:
    """Successful logins from a place the user had not logged in from before.

    `first_logins` maps each place the user ever logged in from (successfully) to the first
    such login, by event time. The earliest place of all is the user's first login, which
    has nothing to compare with; every other place is new at its first login, unless an
    analyst added it to the user's known places (`vouched`). Only places whose first login
    is in this batch are reported; if the user's earliest place is (a late event moved
    it), every other place is reported again, since all are now new.
    """
    ordered = sorted(first_logins.items(), key=lambda item: (item[1].timestamp, item[1].event_id))
    if len(ordered) < 2:
        return []
    first_changed = ordered[0][1].event_id in batch_event_ids
    return [
        _single(rule, user_id, login, value=1, key=place)
        for place, login in ordered[1:]
        if (first_changed or login.event_id in batch_event_ids) and place not in vouched
    ]


# Places longer than this are keyed by a prefix and a digest (the columns are 255 long).
PLACE_KEY_MAX = 200


def place_key(location: str) -> str:
    """A place as history and anomalies key it: itself, or if very long a prefix and a
    digest of the whole, so two long places never collide and no column overflows."""
    if len(location) <= PLACE_KEY_MAX:
        return location
    digest = hashlib.sha256(location.encode()).hexdigest()[:16]
    return f"{location[: PLACE_KEY_MAX - 20]}... #{digest}"


def describe_detail(finding_type: str, start_ms: int, key: str) -> str:
    """The detail a description names: the time of the first quiet-hours event, the place."""
    if finding_type == UNUSUAL_TIME_ACTIVITY:
        return ms_to_datetime(start_ms).strftime("%H:%M:%S")
    if finding_type == UNUSUAL_LOCATION_LOGIN:
        return key
    return ""


def _single(rule: RuleSettings, user_id: int, event: WindowEntry, *, value: float, key: str) -> Finding:
    return Finding(
        user_id=user_id,
        anomaly_type=rule.anomaly_type,
        start_ms=event.timestamp,
        end_ms=event.timestamp,
        value=value,
        window_start_ms=event.timestamp,
        window_end_ms=event.timestamp,
        event_ids=(event.event_id,),
        key=key,
    )


def _first_within(times: Sequence[int], run_start: int, index: int, window_ms: int) -> int:
    """Index of the earliest failure of the run that is within the window before `index`
    (`times` are the sorted logins' event times; a bisection, so a flood of failures costs
    log n per failure, not n)."""
    return bisect_left(times, times[index] - window_ms, run_start, index)


def _any_within(times: Sequence[int], start: int, end: int) -> bool:
    """Whether any of the sorted `times` lies in [start, end]."""
    position = bisect_left(times, start)
    return position < len(times) and times[position] <= end


def _evidence(entries: Sequence[WindowEntry]) -> tuple[str, ...]:
    return tuple(entry.event_id for entry in entries[:EVIDENCE_MAX_EVENTS])
