"""Read-only queries for detection."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from django.db import connection
from django.db.models import Count, QuerySet
from django.db.models.functions import TruncHour

from anomalies_app.detection import WindowEntry
from anomalies_app.models import Anomaly, Rule, UserLocation
from anomalies_app.rules import DEFAULT_RULES, WINDOWED_SIGNAL_TYPES, RuleSettings, is_failed_login, window_of
from anomalies_app.windows import Windows
from signals_app.messages import ms_to_datetime
from signals_app.models import Signal
from signals_app.selectors import hour_of


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


class RuleBook:
    """The rules a worker applies, read again at most every `refresh_seconds`: an edit in
    the admin reaches every worker within that time, without a restart."""

    def __init__(
        self,
        *,
        refresh_seconds: float,
        load: Callable[[], dict[str, RuleSettings]] = rule_settings_list,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self.load = load
        self.clock = clock
        self._rules: dict[str, RuleSettings] = {}
        self._loaded_at: float | None = None

    def rules(self) -> dict[str, RuleSettings]:
        now = self.clock()
        if self._loaded_at is None or now - self._loaded_at >= self.refresh_seconds:
            self._rules = self.load()
            self._loaded_at = now
        return self._rules


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


def user_first_logins(user_ids: list[int]) -> dict[int, dict[str, WindowEntry]]:
    """Every place each user has logged in from, with the first login there."""
    places: dict[int, dict[str, WindowEntry]] = defaultdict(dict)
    for user_id, location, first_seen_ms, first_event_id in UserLocation.objects.filter(
        user_id__in=user_ids
    ).values_list("user_id", "location", "first_seen_ms", "first_event_id"):
        places[user_id][location] = WindowEntry(first_seen_ms, str(first_event_id))
    return dict(places)


def anomaly_list(*, user_id: int | None = None) -> QuerySet[Anomaly]:
    """Anomalies, latest detected first; one user's if `user_id` is given."""
    anomalies = Anomaly.objects.order_by("-detection_timestamp", "-id")
    return anomalies if user_id is None else anomalies.filter(user_id=user_id)


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


def anomaly_counts(*, since_ms: int, until_ms: int) -> list[AnomalyCount]:
    """Anomalies detected in [since_ms, until_ms), per hour since the epoch, type, severity and status."""
    rows = (
        Anomaly.objects.filter(
            detection_timestamp__gte=ms_to_datetime(since_ms), detection_timestamp__lt=ms_to_datetime(until_ms)
        )
        .annotate(hour=TruncHour("detection_timestamp"))
        .values_list("hour", "anomaly_type", "severity", "status")
        .annotate(anomalies=Count("*"))
        .order_by()
    )
    return [AnomalyCount(hour_of(hour), *rest) for hour, *rest in rows]


def anomaly_top_users(*, since_ms: int, until_ms: int, limit: int) -> list[tuple[int, int]]:
    """(user_id, anomalies) of the users with the most anomalies detected in [since_ms, until_ms)."""
    rows = (
        Anomaly.objects.filter(
            detection_timestamp__gte=ms_to_datetime(since_ms), detection_timestamp__lt=ms_to_datetime(until_ms)
        )
        .values_list("user_id")
        .annotate(anomalies=Count("*"))
        .order_by("-anomalies", "user_id")[:limit]
    )
    return [(user_id, anomalies) for user_id, anomalies in rows]
