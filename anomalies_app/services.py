"""Detection: a batch of accepted events in, anomalies stored and published out.

`anomalies_detect_batch` is the one door-independent entry. Per batch:
1. Judge the per-event rules (an amount, a quiet hour) from the events themselves.
2. Add the counted events to the users' Redis windows and read back the stretches the
   rules need, in one atomic script (`windows.py`); find the episodes (`detection.py`).
3. In one PostgreSQL transaction, holding a lock per user (two workers on the same user
   take turns): add the batch's successful logins to the users' location history, find
   the new places, and merge every finding into the anomaly of its episode, or create one.
4. After the commit, publish each anomaly not yet published to ANOMALIES_TOPIC.
Every step is idempotent, so a batch delivered twice, or retried after a crash anywhere,
changes nothing the first delivery did not.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import reduce
from typing import Any, NamedTuple

import orjson
import redis
from confluent_kafka import Producer
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from anomalies_app.detection import (
    Finding,
    WindowEntry,
    count_episodes,
    describe_detail,
    failure_episodes,
    finding_merge,
    findings_merge,
    high_value_finding,
    new_location_findings,
    place_key,
    quiet_hours_finding,
    view_radius_ms,
)
from anomalies_app.locks import users_lock
from anomalies_app.models import Anomaly, AnomalyStatus
from anomalies_app.rules import (
    HIGH_VALUE_PURCHASE,
    LOGIN,
    REPEATED_LOGIN_FAILURES,
    RULES_BY_WINDOW,
    UNUSUAL_LOCATION_LOGIN,
    UNUSUAL_TIME_ACTIVITY,
    WINDOWED_SIGNAL_TYPES,
    Comparison,
    RuleSettings,
    describe,
    fewest_to_break,
    is_failed_login,
    window_of,
)
from anomalies_app.selectors import MuteBook, RuleBook, signal_history, signals_exist, user_known_places
from anomalies_app.windows import Reach, Windows, WindowsGeneration, WindowStore, detect_redis, generation_key
from eventpipeline.kafka import OutgoingRecord, produce_confirmed, shared_producer
from eventpipeline.metrics import (
    ACTIVE_USER_SESSIONS,
    ANOMALIES_DETECTED,
    ANOMALIES_MUTED,
    ANOMALY_DETECTION_LATENCY,
)
from signals_app.messages import ms_to_datetime

logger = logging.getLogger(__name__)

PAYLOAD_READ_BY_RULES = frozenset({"login", "purchase", "api_call"})


class AnomalyPublishError(Exception):
    """Kafka did not confirm every anomaly; they stay unpublished and go out on a retry."""


@dataclass
class DetectResult:
    analysed: int = 0
    created: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    # Created under a mute: recorded, not raised (docs/design.md, "Mutes and known places").
    muted: list[int] = field(default_factory=list)
    # The windows' generation read before the batch touched them, when the windows are not
    # on the Redis of the task results: the bridge compares it (anomalies_app/windows.py).
    windows_generation: str | None = None


class BatchEvent(NamedTuple):
    """An event of the batch as the rules read it (a tuple: one is made per event, and
    a frozen dataclass costs more to make; docs/performance.md, "Less work per event")."""

    event_id: str
    user_id: int
    type: str
    timestamp: int
    payload_json: str
    # Parsed for the types the rules read; the others only if an anomaly quotes them.
    parsed: dict[str, Any] | None

    @property
    def payload(self) -> dict[str, Any]:
        return self.parsed if self.parsed is not None else orjson.loads(self.payload_json)  # type: ignore[no-any-return]

    def entry(self, *, failed: bool = False) -> WindowEntry:
        return WindowEntry(self.timestamp, self.event_id, failed)

    def as_signal(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "user_id": self.user_id,
            "type": self.type,
            "timestamp": self.timestamp,
            "payload": self.payload,
        }


@functools.cache
def rule_book() -> RuleBook:
    return RuleBook(refresh_seconds=settings.RULES_REFRESH_SECONDS)


@functools.cache
def mute_book() -> MuteBook:
    return MuteBook(refresh_seconds=settings.RULES_REFRESH_SECONDS)


@functools.cache
def window_store() -> WindowStore:
    """The windows on DETECT_REDIS_URL, a Redis or a Redis Cluster. Unless they share the
    Redis of the task results, their generation is kept there for the bridge
    (docs/architecture.md, "Detection")."""
    client = detect_redis(settings.DETECT_REDIS_URL)
    shared = isinstance(client, redis.Redis) and settings.DETECT_REDIS_URL == settings.CELERY_RESULT_BACKEND
    generations = None
    if not shared:
        results = redis.Redis.from_url(settings.CELERY_RESULT_BACKEND)
        generations = WindowsGeneration(results, generation_key(settings.DETECT_KEY_PREFIX))
    return WindowStore(
        client,
        prefix=settings.DETECT_KEY_PREFIX,
        load_history=signal_history,
        history_exists=signals_exist,
        generations=generations,
    )


def anomalies_detect_batch(
    *,
    rows: Sequence[Sequence[Any]],
    rules: dict[str, RuleSettings] | None = None,
    windows: WindowStore | None = None,
    mutes: MuteBook | None = None,
    producer: Producer | None = None,
) -> DetectResult:
    """Analyse a batch of accepted events (SignalRows) and record what they show."""
    rules = rules if rules is not None else rule_book().rules()
    windows = windows or window_store()
    mutes = mutes or mute_book()
    events = [_batch_event(row) for row in rows]
    # Read before the windows are touched: see DetectResult.windows_generation.
    generation = windows.generation()
    findings = _per_event_findings(events, rules)
    window_findings, reviews = _window_findings(events, rules, windows)
    findings += window_findings
    result = DetectResult(analysed=len(events), windows_generation=generation)
    anomalies = _anomalies_from_findings(events, findings, reviews, rules, result, windows, mutes)
    ACTIVE_USER_SESSIONS.set(windows.active_users({event.user_id for event in events}))
    anomalies_publish(anomaly_ids=anomalies, topic=settings.ANOMALIES_TOPIC, producer=producer or shared_producer())
    return result


def _batch_event(row: Sequence[Any]) -> BatchEvent:
    event_id, user_id, signal_type, timestamp, payload_json = row[:5]
    parsed = orjson.loads(payload_json) if signal_type in PAYLOAD_READ_BY_RULES else None
    return BatchEvent(str(event_id), int(user_id), signal_type, int(timestamp), payload_json, parsed)


def _per_event_findings(events: list[BatchEvent], rules: dict[str, RuleSettings]) -> list[Finding]:
    findings: list[Finding] = []
    high_value, quiet = rules[HIGH_VALUE_PURCHASE], rules[UNUSUAL_TIME_ACTIVITY]
    for event in events:
        if high_value.enabled and event.type == "purchase":
            found = high_value_finding(high_value, event.user_id, event.entry(), float(event.payload["amount"]))
            if found:
                findings.append(found)
        if quiet.enabled:
            found = quiet_hours_finding(quiet, event.user_id, event.entry())
            if found:
                findings.append(found)
    return findings


@dataclass(frozen=True)
class FailureReview:
    """What a view shows of a user's failed-login runs, between `lo` and `hi` (event time,
    ms), where it shows all of them: the runs that hold now (`runs`)."""

    user_id: int
    lo: int
    hi: int
    runs: list[Finding]


def _window_findings(
    events: list[BatchEvent], rules: dict[str, RuleSettings], windows: WindowStore
) -> tuple[list[Finding], list[FailureReview]]:
    additions: Windows = defaultdict(list)
    for event in events:
        if event.type not in WINDOWED_SIGNAL_TYPES:
            continue
        window = window_of(event.type, event.payload)
        if window is not None:
            additions[(event.user_id, window)].append(event.entry(failed=is_failed_login(event.type, event.payload)))
    if not additions:
        return [], []
    lateness_ms = settings.DETECT_LATENESS_SECONDS * 1000
    reach = {}
    for kind, anomaly_types in RULES_BY_WINDOW.items():
        radius = max(view_radius_ms(rules[anomaly_type]) for anomaly_type in anomaly_types)
        reach[kind] = Reach(radius_ms=radius, keep_ms=radius + lateness_ms)
    views = windows.record(dict(additions), reach)

    findings: list[Finding] = []
    reviews: list[FailureReview] = []
    failures = rules[REPEATED_LOGIN_FAILURES]
    for (user_id, kind), view in views.items():
        added_at = sorted(entry.timestamp for entry in additions[(user_id, kind)])
        failed = sum(1 for entry in view if entry.failed)
        for anomaly_type in RULES_BY_WINDOW[kind]:
            rule = rules[anomaly_type]
            counted = failed if anomaly_type == REPEATED_LOGIN_FAILURES else len(view)
            if not rule.enabled or counted < fewest_to_break(rule):
                continue  # too few events in the whole view to break the rule anywhere
            episodes = failure_episodes if anomaly_type == REPEATED_LOGIN_FAILURES else count_episodes
            findings += episodes(rule, user_id, view, added_at)
        if kind == LOGIN and failures.enabled and _may_split_a_run(additions[(user_id, kind)], view):
            # A success that came after failures later than itself may have split a run
            # already raised: review the runs this view shows in full.
            everything = [entry.timestamp for entry in view]
            runs = failure_episodes(failures, user_id, view, everything)
            lo = added_at[0] - reach[LOGIN].radius_ms + failures.window_seconds * 1000
            reviews.append(FailureReview(user_id, lo, added_at[-1] + reach[LOGIN].radius_ms, runs))
    return findings, reviews


def _may_split_a_run(added: list[WindowEntry], view: list[WindowEntry]) -> bool:
    """Whether a success among `added` lies before a failure in the view (out of order)."""
    successes = [entry.timestamp for entry in added if not entry.failed]
    return bool(successes) and any(entry.failed and entry.timestamp > min(successes) for entry in view)


def _anomalies_from_findings(
    events: list[BatchEvent],
    findings: list[Finding],
    reviews: list[FailureReview],
    rules: dict[str, RuleSettings],
    result: DetectResult,
    windows: WindowStore,
    mutes: MuteBook,
) -> list[int]:
    """Step 3 of the module docstring, in one transaction. Returns the anomalies to publish."""
    location_rule = rules[UNUSUAL_LOCATION_LOGIN]
    first_logins: dict[tuple[int, str], WindowEntry] = {}
    for event in events:
        if event.type == "login" and event.payload["success"]:
            place = (event.user_id, place_key(str(event.payload["location"])))
            first_logins[place] = min(first_logins.get(place, event.entry()), event.entry())
    for known in windows.places_known(first_logins) if first_logins else ():
        del first_logins[known]
    if not findings and not first_logins and not reviews:
        return []
    signals = {event.event_id: event for event in events}
    users = sorted(
        {finding.user_id for finding in findings}
        | {user_id for user_id, _ in first_logins}
        | {review.user_id for review in reviews}
    )
    places: dict[int, dict[str, WindowEntry]] = {}
    with transaction.atomic():
        users_lock(users)
        if first_logins:
            user_locations_record(first_logins=first_logins)
            known_by_user = user_known_places(sorted({user_id for user_id, _ in first_logins}))
            places = {user_id: known_places.first_logins for user_id, known_places in known_by_user.items()}
            if location_rule.enabled:
                for user_id, known_places in known_by_user.items():
                    findings += new_location_findings(
                        location_rule, user_id, known_places.first_logins, set(signals), known_places.vouched
                    )
        if reviews or any(f.anomaly_type == REPEATED_LOGIN_FAILURES for f in findings):
            findings, reviews = _failure_runs_recheck(findings, reviews, rules[REPEATED_LOGIN_FAILURES], windows)
        if reviews:
            # First withdraw what a late success undid, then record the runs as they are.
            failure_anomalies_review(reviews=reviews, rule=rules[REPEATED_LOGIN_FAILURES])
            findings += [run for review in reviews for run in review.runs]
        merged = findings_merge(findings)
        recorded = anomaly_findings_record(findings=merged, rules=rules, signals=signals, result=result, mutes=mutes)
    if first_logins:
        windows.places_remember(places)
    for anomaly_id, finding, _ in recorded:
        if anomaly_id in result.muted:
            ANOMALIES_MUTED.labels(anomaly_type=finding.anomaly_type).inc()
        elif anomaly_id in result.created:
            ANOMALIES_DETECTED.labels(anomaly_type=finding.anomaly_type).inc()
            ANOMALY_DETECTION_LATENCY.observe(max(0.0, time.time() - finding.window_end_ms / 1000))
    return [anomaly_id for anomaly_id, _, unpublished in recorded if unpublished]


def _failure_runs_recheck(
    findings: list[Finding], reviews: list[FailureReview], rule: RuleSettings, windows: WindowStore
) -> tuple[list[Finding], list[FailureReview]]:
    """Runs of failed logins again, from the windows as they are now, under the users'
    locks. Runs are the one thing a late event can undo (a success splits one), so a
    view read before the lock may be out of date: a worker holding a success and one
    holding the failures around it, each reading before the other wrote, would each see
    a run that is not there, or miss one that is. Whatever the order, the last worker to
    take the lock reads both."""
    radius = view_radius_ms(rule)
    spans: dict[int, tuple[int, int]] = {}
    for finding in findings:
        if finding.anomaly_type == REPEATED_LOGIN_FAILURES:
            lo, hi = spans.get(finding.user_id, (finding.start_ms - radius, finding.end_ms + radius))
            spans[finding.user_id] = (min(lo, finding.start_ms - radius), max(hi, finding.end_ms + radius))
    for review in reviews:
        lo, hi = spans.get(review.user_id, (review.lo, review.hi))
        spans[review.user_id] = (min(lo, review.lo - rule.window_seconds * 1000), max(hi, review.hi))
    views = windows.read({(user_id, LOGIN): span for user_id, span in spans.items()})
    runs = {
        user_id: failure_episodes(rule, user_id, view, [entry.timestamp for entry in view])
        for (user_id, _), view in views.items()
    }
    checked = [
        finding
        for finding in findings
        if finding.anomaly_type != REPEATED_LOGIN_FAILURES
        or any(run.same_episode(finding) for run in runs[finding.user_id])
    ]
    checked += [
        run
        for finding in findings
        if finding.anomaly_type == REPEATED_LOGIN_FAILURES
        for run in runs[finding.user_id]
        if run.same_episode(finding)
    ]
    return checked, [replace(review, runs=runs[review.user_id]) for review in reviews]


def user_locations_record(*, first_logins: dict[tuple[int, str], WindowEntry]) -> None:
    """Add places to users' location history, keeping the earliest login at each place."""
    user_ids, locations, first_seen, event_ids = [], [], [], []
    for (user_id, location), entry in sorted(first_logins.items()):
        user_ids.append(user_id)
        locations.append(location)
        first_seen.append(entry.timestamp)
        event_ids.append(entry.event_id)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO user_locations (user_id, location, first_seen_ms, first_event_id)
            SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::uuid[])
            ON CONFLICT (user_id, location) DO UPDATE
            SET first_seen_ms = excluded.first_seen_ms, first_event_id = excluded.first_event_id
            WHERE user_locations.first_seen_ms IS NULL
                OR (excluded.first_seen_ms, excluded.first_event_id::text)
                    < (user_locations.first_seen_ms, user_locations.first_event_id::text)
            """,
            [user_ids, locations, first_seen, event_ids],
        )


# The anomalies a batch's findings may belong to: the same user, rule and key, and for
# unkeyed episodes an overlapping span. One statement for the whole batch: an OR of a
# condition per finding cost more to build in the ORM than to run
# (docs/performance.md, "Publishing anomalies and finding episodes").
EPISODE_CANDIDATES_SQL = """
SELECT * FROM anomalies WHERE id IN (
    SELECT a.id
    FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[], %s::bigint[])
        AS f (user_id, anomaly_type, episode_key, start_ms, end_ms)
    JOIN anomalies AS a
        ON a.user_id = f.user_id AND a.anomaly_type = f.anomaly_type AND a.episode_key = f.episode_key
        AND (f.episode_key <> '' OR (a.episode_start_ms <= f.end_ms AND a.episode_end_ms >= f.start_ms))
)
ORDER BY id
FOR UPDATE
"""


def anomaly_findings_record(
    *,
    findings: list[Finding],
    rules: dict[str, RuleSettings],
    signals: dict[str, BatchEvent],
    result: DetectResult,
    mutes: MuteBook,
) -> list[tuple[int, Finding, bool]]:
    """Merge each finding into the anomaly of its episode, or create one. Run inside a
    transaction holding the users' locks.

    Anomalies that turn out to be one episode are merged into one: the triaged one if an
    analyst has started on one, else the oldest, with the others' notes. This happens when
    events of one user are analysed out of order (late events, or two batches of the same
    partition on two workers at once). A merged anomaly that had been published is
    announced on ANOMALIES_TOPIC as `{"id": ..., "merged_into": ...}` before the
    transaction commits, so a failure there redoes both.

    A new episode of a user and rule under a mute is recorded as suppressed: it is not
    published, and a finding of the same episode after the mute ends merges into it
    instead of raising it again.
    """
    if not findings:
        return []
    # Only the anomalies these findings can belong to; locked, so that a worker publishing
    # one of them finishes first and this one sees whether it went out.
    columns = zip(*((f.user_id, f.anomaly_type, f.key, f.start_ms, f.end_ms) for f in findings), strict=True)
    stored: dict[tuple[int, str], list[Anomaly]] = defaultdict(list)
    for anomaly in Anomaly.objects.raw(EPISODE_CANDIDATES_SQL, [list(column) for column in columns]):
        stored[(anomaly.user_id, anomaly.anomaly_type)].append(anomaly)

    recorded: list[tuple[int, Finding, bool]] = []  # (anomaly id, episode, not published yet)
    new: list[tuple[Anomaly, Finding]] = []
    for finding in findings:  # merged already: no two of them are one episode
        candidates = stored[(finding.user_id, finding.anomaly_type)]
        matches = [anomaly for anomaly in candidates if _finding_of(anomaly).same_episode(finding)]
        if not matches:
            anomaly = _anomaly_new(finding, rules[finding.anomaly_type], signals)
            anomaly.suppressed_by_id = mutes.mute_of(finding.user_id, finding.anomaly_type)
            anomaly.suppressed = anomaly.suppressed_by_id is not None
            new.append((anomaly, finding))
            continue
        # An anomaly raised survives one held back by a mute (else what was raised, and
        # maybe published, would vanish into it); then a triaged one; then the oldest.
        survivor = min(matches, key=lambda a: (a.suppressed, a.status == AnomalyStatus.NEW, a.pk))
        merged_away = [anomaly for anomaly in matches if anomaly is not survivor]
        merged = reduce(finding_merge, [_finding_of(anomaly) for anomaly in merged_away], finding)
        merged = finding_merge(_finding_of(survivor), merged)
        if merged != _finding_of(survivor):
            _anomaly_update(survivor, merged)
            result.updated.append(survivor.pk)
        if merged_away:
            anomalies_merge(survivor=survivor, merged_away=merged_away)
            for anomaly in merged_away:
                candidates.remove(anomaly)
        recorded.append((survivor.pk, merged, survivor.published_at is None and not survivor.suppressed))
    Anomaly.objects.bulk_create([anomaly for anomaly, _ in new])
    for anomaly, finding in new:
        result.created.append(anomaly.pk)
        if anomaly.suppressed:
            result.muted.append(anomaly.pk)
        recorded.append((anomaly.pk, finding, not anomaly.suppressed))
    return recorded


def failure_anomalies_review(*, reviews: list[FailureReview], rule: RuleSettings) -> None:
    """Withdraw the failed-login anomalies that a success, come late, has shown to be no
    single run: none left, or one split in two (the caller then records the runs as they
    are). Only untriaged ones raised under the rule as it is now: an anomaly raised under
    other settings was right under them. A withdrawn anomaly that had been published is
    announced as `{"id": ..., "withdrawn": reason}`."""
    raised: dict[int, list[Anomaly]] = defaultdict(list)
    for anomaly in (
        Anomaly.objects.select_for_update()
        .filter(
            user_id__in={review.user_id for review in reviews},
            anomaly_type=REPEATED_LOGIN_FAILURES,
            status=AnomalyStatus.NEW,
            # One held back by a mute stays: the runs recorded again merge into it, so a
            # mute's past is not raised once the mute ends.
            suppressed=False,
        )
        .order_by("pk")
    ):
        raised[anomaly.user_id].append(anomaly)
    for review in reviews:
        stale = [
            anomaly
            for anomaly in raised[review.user_id]
            if review.lo <= anomaly.episode_start_ms
            and anomaly.episode_end_ms <= review.hi
            and anomaly.evidence["rule"]["threshold"] == rule.threshold
            and anomaly.evidence["rule"]["window_seconds"] == rule.window_seconds
            and not any(_within(anomaly, run) for run in review.runs)
        ]
        if stale:
            reason = "a successful login, analysed late, broke the run of failures"
            _announce([{"id": a.pk, "withdrawn": reason, "user_id": a.user_id} for a in stale if a.published_at])
            logger.info("anomalies %s withdrawn: %s", [a.pk for a in stale], reason)
            Anomaly.objects.filter(pk__in=[a.pk for a in stale]).delete()


def _within(anomaly: Anomaly, run: Finding) -> bool:
    return run.start_ms <= anomaly.episode_start_ms and anomaly.episode_end_ms <= run.end_ms


def _announce(notices: list[dict[str, Any]]) -> None:
    """Tell ANOMALIES_TOPIC that anomalies it carried were merged or withdrawn. Called
    inside the transaction that removes them, so a failure here undoes both."""
    if not notices:
        return
    produce_confirmed(
        shared_producer(),
        settings.ANOMALIES_TOPIC,
        (OutgoingRecord(str(notice["user_id"]), orjson.dumps(notice)) for notice in notices),
        what="merge or withdrawal notices",
        error=AnomalyPublishError,
    )


def anomalies_merge(*, survivor: Anomaly, merged_away: list[Anomaly]) -> None:
    logger.info("anomalies %s are one episode with %s: merged", [a.pk for a in merged_away], survivor.pk)
    notes = [a.triage_notes for a in merged_away if a.triage_notes]
    if notes:
        survivor.triage_notes = "\n".join([survivor.triage_notes, *notes]).strip()
        survivor.save(update_fields=["triage_notes"])
    _announce([{"id": a.pk, "merged_into": survivor.pk, "user_id": a.user_id} for a in merged_away if a.published_at])
    Anomaly.objects.filter(pk__in=[a.pk for a in merged_away]).delete()


def _finding_of(anomaly: Anomaly) -> Finding:
    evidence = anomaly.evidence
    return Finding(
        user_id=anomaly.user_id,
        anomaly_type=anomaly.anomaly_type,
        start_ms=anomaly.episode_start_ms,
        end_ms=anomaly.episode_end_ms,
        value=evidence["value"],
        window_start_ms=evidence["window_start_ms"],
        window_end_ms=evidence["window_end_ms"],
        event_ids=tuple(evidence["event_ids"]),
        key=anomaly.episode_key,
    )


def _evidence(finding: Finding, rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "rule": rule,
        "value": finding.value,
        "window_start_ms": finding.window_start_ms,
        "window_end_ms": finding.window_end_ms,
        "window_start": _iso(finding.window_start_ms),
        "window_end": _iso(finding.window_end_ms),
        "event_ids": list(finding.event_ids),
    }


def _description(finding: Finding, rule: dict[str, Any]) -> str:
    settings_then = RuleSettings(
        anomaly_type=finding.anomaly_type,
        threshold=rule["threshold"],
        window_seconds=rule["window_seconds"],
        severity=rule["severity"],
        comparison=Comparison(rule["comparison"]),
    )
    return describe(settings_then, finding.value, describe_detail(finding.anomaly_type, finding.start_ms, finding.key))


def _anomaly_new(finding: Finding, rule: RuleSettings, signals: dict[str, BatchEvent]) -> Anomaly:
    snapshot = {
        "threshold": rule.threshold,
        "window_seconds": rule.window_seconds,
        "comparison": rule.comparison.value,
        "severity": rule.severity,
    }
    trigger = next((signals[event_id] for event_id in finding.event_ids if event_id in signals), None)
    return Anomaly(
        user_id=finding.user_id,
        anomaly_type=finding.anomaly_type,
        severity=rule.severity,
        description=_description(finding, snapshot),
        original_signal_data=trigger.as_signal() if trigger else {},
        episode_key=finding.key,
        episode_start_ms=finding.start_ms,
        episode_end_ms=finding.end_ms,
        evidence=_evidence(finding, snapshot),
    )


def _anomaly_update(anomaly: Anomaly, merged: Finding) -> None:
    rule = anomaly.evidence["rule"]
    anomaly.episode_start_ms = merged.start_ms
    anomaly.episode_end_ms = merged.end_ms
    anomaly.evidence = _evidence(merged, rule)
    anomaly.description = _description(merged, rule)
    anomaly.save(update_fields=["episode_start_ms", "episode_end_ms", "evidence", "description"])


def _iso(timestamp_ms: int) -> str:
    return ms_to_datetime(timestamp_ms).isoformat(timespec="milliseconds")


def anomaly_message(anomaly: Anomaly) -> bytes:
    """An anomaly as ANOMALIES_TOPIC carries it (JSON; the key is the user id)."""
    return orjson.dumps(
        {
            "id": anomaly.pk,
            "user_id": anomaly.user_id,
            "anomaly_type": anomaly.anomaly_type,
            "severity": anomaly.severity,
            "description": anomaly.description,
            "episode_start": _iso(anomaly.episode_start_ms),
            "episode_end": _iso(anomaly.episode_end_ms),
            "evidence": anomaly.evidence,
            "detected_at": anomaly.detection_timestamp.isoformat(),
        }
    )


# Locks in id order (two workers claiming overlapping sets must not deadlock); a row
# another worker claimed first is skipped once its claim commits (FOR UPDATE re-reads it).
CLAIM_FOR_PUBLISHING_SQL = """
UPDATE anomalies SET published_at = %s
WHERE id IN (
    SELECT id FROM anomalies WHERE id = ANY(%s) AND published_at IS NULL AND NOT suppressed ORDER BY id FOR UPDATE
)
RETURNING *
"""


def anomalies_publish(*, anomaly_ids: list[int], topic: str, producer: Producer) -> int:
    """Publish the anomalies among `anomaly_ids` not published yet, each once.

    The rows are claimed (published_at set, which locks them) in a transaction that stays
    open until Kafka confirms: a second worker publishing the same anomaly waits for the
    claim and then skips it; a failure rolls the claim back, for the retry to publish them."""
    if not anomaly_ids:
        return 0
    with transaction.atomic():
        claimed = Anomaly.objects.raw(CLAIM_FOR_PUBLISHING_SQL, [timezone.now(), anomaly_ids])
        pending = sorted(claimed, key=lambda anomaly: anomaly.pk)
        if not pending:
            return 0
        produce_confirmed(
            producer,
            topic,
            (OutgoingRecord(str(anomaly.user_id), anomaly_message(anomaly)) for anomaly in pending),
            what="anomalies",
            error=AnomalyPublishError,
        )
    return len(pending)
