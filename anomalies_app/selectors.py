"""Read-only queries for detection."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Generic, TypeVar

import orjson
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Count, F, Q, QuerySet
from django.db.models.functions import TruncHour

from anomalies_app.detection import WindowEntry
from anomalies_app.models import OPEN_STATUSES, Anomaly, Mute, Rule, UserLocation
from anomalies_app.rules import (
    DEFAULT_RULES,
    WINDOWED_SIGNAL_TYPES,
    Comparison,
    RuleSettings,
    is_failed_login,
    window_of,
)
from anomalies_app.triage import TRIAGE_PERMISSION
from anomalies_app.windows import Windows
from signals_app.messages import ms_to_datetime
from signals_app.models import Signal
from signals_app.selectors import hour_of, signal_list

T = TypeVar("T")


def rule_settings_list() -> dict[str, RuleSettings]:
    """The rules as stored, on top of their definitions (the comparison is not stored)."""
    stored = {
        rule.anomaly_type: replace(
            DEFAULT_RULES[rule.anomaly_type],
            enabled=rule.enabled,
            threshold=rule.threshold,
            window_seconds=rule.window_seconds,
            severity=rule.severity,
        )
        for rule in Rule.objects.filter(anomaly_type__in=DEFAULT_RULES)
    }
    return {anomaly_type: stored.get(anomaly_type, default) for anomaly_type, default in DEFAULT_RULES.items()}


class Reread(Generic[T]):
    """What `load` returns, read again at most every `refresh_seconds`: the rules and the
    mutes a worker applies, so that an edit in the admin reaches every worker within that
    time, without a restart, and without a query per event."""

    def __init__(
        self, *, refresh_seconds: float, load: Callable[[], T], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self.load = load
        self.clock = clock
        self._value: T | None = None
        self._loaded_at: float | None = None

    def get(self) -> T:
        now = self.clock()
        if self._value is None or self._loaded_at is None or now - self._loaded_at >= self.refresh_seconds:
            self._value = self.load()
            self._loaded_at = now
        return self._value


class RuleBook(Reread[dict[str, RuleSettings]]):
    def __init__(
        self,
        *,
        refresh_seconds: float,
        load: Callable[[], dict[str, RuleSettings]] = rule_settings_list,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(refresh_seconds=refresh_seconds, load=load, clock=clock)

    def rules(self) -> dict[str, RuleSettings]:
        return self.get()


def signal_history(user_ids: list[int], since_ms: int) -> Windows:
    """The counted events of these users from `since_ms` on, as their windows hold them:
    to fill windows in again after Redis lost them. Which window an event goes in is
    `window_of`'s decision; PostgreSQL only narrows the rows to the types it can choose."""
    history: Windows = defaultdict(list)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT user_id, type, timestamp, event_id::text,
                   jsonb_build_object('success', payload->'success', 'status_code', payload->'status_code')
            FROM signals
            WHERE user_id = ANY(%s) AND timestamp >= %s AND type = ANY(%s)
            """,
            [user_ids, since_ms, list(WINDOWED_SIGNAL_TYPES)],
        )
        for user_id, signal_type, timestamp, event_id, payload_json in cursor:
            payload = orjson.loads(payload_json)
            window = window_of(signal_type, payload)
            if window is not None:
                failed = is_failed_login(signal_type, payload)
                history[(user_id, window)].append(WindowEntry(timestamp, event_id, failed))
    return dict(history)


def signals_exist() -> bool:
    return Signal.objects.exists()


@dataclass(frozen=True)
class KnownPlaces:
    """A user's known places: where they logged in from, with the first login there, and
    the places an analyst vouched for (with or without a login from them yet)."""

    first_logins: dict[str, WindowEntry]
    vouched: frozenset[str]


def user_known_places(user_ids: list[int]) -> dict[int, KnownPlaces]:
    """Every place each user has logged in from, with the first login there, and the
    places added by hand."""
    first_logins: dict[int, dict[str, WindowEntry]] = defaultdict(dict)
    vouched: dict[int, set[str]] = defaultdict(set)
    for user_id, location, first_seen_ms, first_event_id, added_at in UserLocation.objects.filter(
        user_id__in=user_ids
    ).values_list("user_id", "location", "first_seen_ms", "first_event_id", "added_at"):
        if first_seen_ms is not None:
            first_logins[user_id][location] = WindowEntry(first_seen_ms, str(first_event_id))
        if added_at is not None:
            vouched[user_id].add(location)
    return {
        user_id: KnownPlaces(first_logins.get(user_id, {}), frozenset(vouched.get(user_id, ())))
        for user_id in first_logins.keys() | vouched.keys()
    }


def mutes_active() -> dict[tuple[int, str], tuple[int, float]]:
    """The mutes on now: (user id, rule) to (mute id, until as a Unix time); the latest
    ending if several overlap."""
    active: dict[tuple[int, str], tuple[int, float]] = {}
    for mute_id, user_id, anomaly_type, until in Mute.objects.active().values_list(
        "id", "user_id", "anomaly_type", "until"
    ):
        key = (user_id, anomaly_type)
        if key not in active or until.timestamp() > active[key][1]:
            active[key] = (mute_id, until.timestamp())
    return active


class MuteBook(Reread[dict[tuple[int, str], tuple[int, float]]]):
    """The mutes on, re-read like the rules."""

    def __init__(
        self,
        *,
        refresh_seconds: float,
        load: Callable[[], dict[tuple[int, str], tuple[int, float]]] = mutes_active,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(refresh_seconds=refresh_seconds, load=load, clock=clock)
        self.wall_clock = wall_clock

    def mute_of(self, user_id: int, anomaly_type: str) -> int | None:
        """The id of the mute that holds this user's findings of this rule back now, if any."""
        found = self.get().get((user_id, anomaly_type))
        return found[0] if found and found[1] > self.wall_clock() else None


def anomaly_list(*, user_id: int | None = None, anomaly_id: int | None = None) -> QuerySet[Anomaly]:
    """Anomalies, latest detected first; one user's if `user_id` is given, the one with
    `anomaly_id` if that is."""
    anomalies = Anomaly.objects.order_by("-detection_timestamp", "-id")
    if user_id is not None:
        anomalies = anomalies.filter(user_id=user_id)
    if anomaly_id is not None:
        anomalies = anomalies.filter(pk=anomaly_id)
    return anomalies


def anomaly_open_list(*, user_id: int) -> QuerySet[Anomaly]:
    """A user's anomalies still to be decided (new or acknowledged), without those a mute
    held back: an analyst's work on that user."""
    return anomaly_list(user_id=user_id).filter(status__in=OPEN_STATUSES, suppressed=False)


def anomaly_rule_then(*, anomaly: Anomaly) -> RuleSettings | None:
    """The rule as it was when the anomaly was raised (its evidence keeps a copy), or None
    for an anomaly whose evidence does not say."""
    rule = (anomaly.evidence or {}).get("rule")
    if not isinstance(rule, dict):
        return None
    try:
        return RuleSettings(
            anomaly_type=anomaly.anomaly_type,
            threshold=float(rule["threshold"]),
            window_seconds=int(rule["window_seconds"]),
            severity=str(rule["severity"]),
            comparison=Comparison(rule["comparison"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True)
class EvidenceEvent:
    """One event of an anomaly's evidence, and its stored signal (None when `signals` does
    not hold it: removed by retention, or not an event id at all)."""

    event_id: str
    signal: Signal | None


def anomaly_evidence_events(*, anomaly: Anomaly) -> list[EvidenceEvent]:
    """The events an anomaly's evidence names, as stored, in event-time order; those not
    stored follow in the evidence's order. One query, on the unique index of (event_id,
    timestamp) of each partition, which event_id leads."""
    listed = [str(event_id) for event_id in (anomaly.evidence or {}).get("event_ids") or []]
    ids: dict[str, uuid.UUID] = {}
    for event_id in listed:
        try:
            ids[event_id] = uuid.UUID(event_id)
        except ValueError:
            continue
    stored = {signal.event_id: signal for signal in Signal.objects.filter(event_id__in=set(ids.values()))}
    found = sorted(
        ((stored[ids[event_id]], event_id) for event_id in listed if ids.get(event_id) in stored),
        key=lambda pair: (pair[0].timestamp, pair[0].pk),
    )
    missing = [EvidenceEvent(event_id, None) for event_id in listed if ids.get(event_id) not in stored]
    return [EvidenceEvent(event_id, signal) for signal, event_id in found] + missing


def triager_list() -> QuerySet[User]:
    """The people who may triage anomalies, and so may be assigned one: active, and given
    the triage permission directly, through a group, or as superusers."""
    app_label, codename = TRIAGE_PERMISSION.split(".")
    return (
        User.objects.filter(is_active=True)
        .filter(
            Q(is_superuser=True)
            | Q(user_permissions__codename=codename, user_permissions__content_type__app_label=app_label)
            | Q(groups__permissions__codename=codename, groups__permissions__content_type__app_label=app_label)
        )
        .distinct()
        .order_by("username")
    )


@dataclass(frozen=True)
class UserOverview:
    """What an analyst needs to judge one user: risk, open anomalies, mutes, known places
    and latest signals."""

    user_id: int
    risk: dict[str, Any]
    open_anomalies: list[Anomaly]
    more_open_anomalies: bool
    mutes: list[Mute]
    known_places: list[UserLocation]
    signals: list[Signal]


def user_overview(*, user_id: int, anomalies_max: int = 100, signals_max: int = 100) -> UserOverview:
    """One user at a glance. The signals are the latest `signals_max` by event time, read
    on the (user_id, timestamp) index; nothing here counts the user's signals but the risk
    score's own SQL."""
    open_anomalies = list(anomaly_open_list(user_id=user_id).select_related("assigned_to")[: anomalies_max + 1])
    return UserOverview(
        user_id=user_id,
        risk=user_risk_score(user_id=user_id),
        open_anomalies=open_anomalies[:anomalies_max],
        more_open_anomalies=len(open_anomalies) > anomalies_max,
        mutes=list(Mute.objects.active().filter(user_id=user_id).select_related("created_by").order_by("until")),
        known_places=list(
            UserLocation.objects.filter(user_id=user_id)
            .select_related("added_by")
            .order_by(F("first_seen_ms").asc(nulls_last=True), "location")
        ),
        signals=list(signal_list(user_id=user_id)[:signals_max]),
    )


def user_risk_score(*, user_id: int) -> dict[str, Any]:
    """The row of the SQL function users also call directly (docs/design.md, "Database extras")."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM get_user_risk_score(%s)", [user_id])
        columns = [column.name for column in cursor.description]
        return dict(zip(columns, cursor.fetchone(), strict=True))


@dataclass(frozen=True)
class AnomalyCount:
    hour: int
    anomaly_type: str
    severity: str
    status: str
    anomalies: int


def _raised_between(since_ms: int, until_ms: int) -> QuerySet[Anomaly]:
    """Anomalies detected in [since_ms, until_ms), less those recorded under a mute, which
    no report counts (docs/design.md, "Mutes and known places")."""
    return Anomaly.objects.filter(
        detection_timestamp__gte=ms_to_datetime(since_ms),
        detection_timestamp__lt=ms_to_datetime(until_ms),
        suppressed=False,
    )


def anomaly_counts(*, since_ms: int, until_ms: int) -> list[AnomalyCount]:
    """Anomalies detected in [since_ms, until_ms), not suppressed, per hour since the epoch,
    type, severity and status."""
    rows = (
        _raised_between(since_ms, until_ms)
        .annotate(hour=TruncHour("detection_timestamp"))
        .values_list("hour", "anomaly_type", "severity", "status")
        .annotate(anomalies=Count("*"))
        .order_by()
    )
    return [AnomalyCount(hour_of(hour), *rest) for hour, *rest in rows]


def anomaly_top_users(*, since_ms: int, until_ms: int, limit: int) -> list[tuple[int, int]]:
    """(user_id, anomalies) of the users with the most anomalies detected in [since_ms, until_ms),
    not suppressed."""
    rows = (
        _raised_between(since_ms, until_ms)
        .values_list("user_id")
        .annotate(anomalies=Count("*"))
        .order_by("-anomalies", "user_id")[:limit]
    )
    return [(user_id, anomalies) for user_id, anomalies in rows]


def anomaly_expired_list(*, before: datetime, include_open: bool) -> tuple[QuerySet[Anomaly], QuerySet[Anomaly]]:
    """Retention's share of anomalies detected before `before`: (those that go, those kept).

    One still waiting for an analyst (new or acknowledged, and not held back by a mute) is
    kept past retention unless `include_open`: deleting it would lose work nobody has done.
    The SQL function cleanup_old_data keeps the same ones (anomalies_app migration 0011)."""
    old = Anomaly.objects.filter(detection_timestamp__lt=before)
    awaiting = Q(status__in=OPEN_STATUSES, suppressed=False)
    if include_open:
        return old, old.none()
    return old.exclude(awaiting), old.filter(awaiting)
