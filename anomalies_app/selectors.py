"""Read-only queries for detection."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from django.db import connection
from django.db.models import Count, QuerySet
from django.db.models.functions import TruncHour

from anomalies_app.detection import WindowEntry
from anomalies_app.models import Anomaly, InjectionRun, Rule, UserLocation
from anomalies_app.rules import DEFAULT_RULES, RuleSettings
from anomalies_app.windows import API_FAILURE, LOGIN, PURCHASE, Windows
from signals_app.models import Signal
from signals_app.selectors import hour_of, ms_datetime


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
    to fill windows in again after Redis lost them."""
    history: Windows = defaultdict(list)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT user_id, type, timestamp, event_id::text, type = 'login' AND NOT (payload->>'success')::boolean
            FROM signals
            WHERE user_id = ANY(%s) AND timestamp >= %s
              AND (type IN ('login', 'purchase')
                   OR (type = 'api_call' AND (payload->>'status_code')::numeric >= 500))
            """,
            [user_ids, since_ms],
        )
        for user_id, signal_type, timestamp, event_id, failed in cursor:
            kind = {"login": LOGIN, "purchase": PURCHASE, "api_call": API_FAILURE}[signal_type]
            history[(user_id, kind)].append(WindowEntry(timestamp, event_id, bool(failed)))
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


@dataclass(frozen=True)
class RuleVerdict:
    anomaly_type: str
    injected: int
    detected: int
    true_positives: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.detected if self.detected else 1.0  # no false positive

    @property
    def recall(self) -> float:
        return self.true_positives / self.injected if self.injected else 0.0


def detection_verdict(*, run: InjectionRun) -> list[RuleVerdict]:
    """Per rule: how many anomalies the run injected, how many were detected among its
    users, and how many of those match an injected one (the same user and rule; a second
    anomaly for one scenario is a false positive, as is any for a near miss or for the
    clean background)."""
    injected: dict[str, set[int]] = defaultdict(set)
    for anomaly_type, user_id in run.scenarios.exclude(anomaly_type="").values_list("anomaly_type", "user_id"):
        injected[anomaly_type].add(user_id)
    detected: dict[str, list[int]] = defaultdict(list)
    for anomaly_type, user_id in Anomaly.objects.filter(
        user_id__gte=run.first_user_id, user_id__lte=run.last_user_id
    ).values_list("anomaly_type", "user_id"):
        detected[anomaly_type].append(user_id)
    verdicts = []
    for anomaly_type in DEFAULT_RULES:
        matched = set(detected[anomaly_type]) & injected[anomaly_type]
        verdicts.append(
            RuleVerdict(anomaly_type, len(injected[anomaly_type]), len(detected[anomaly_type]), len(matched))
        )
    return verdicts


def injection_progress(*, run: InjectionRun) -> tuple[int, int]:
    """(events of the run stored, anomalies among its users): to tell when detection is done."""
    users = {"user_id__gte": run.first_user_id, "user_id__lte": run.last_user_id}
    return Signal.objects.filter(**users).count(), Anomaly.objects.filter(**users).count()


def anomaly_list(*, user_id: int | None = None) -> QuerySet[Anomaly]:
    """Anomalies, latest detected first; one user's if `user_id` is given."""
    anomalies = Anomaly.objects.order_by("-detection_timestamp", "-id")
    return anomalies if user_id is None else anomalies.filter(user_id=user_id)


def user_risk_score(*, user_id: int) -> dict[str, Any]:
    """The row of the SQL function users also call directly (DESIGN.md "Database extras")."""
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
            detection_timestamp__gte=ms_datetime(since_ms), detection_timestamp__lt=ms_datetime(until_ms)
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
            detection_timestamp__gte=ms_datetime(since_ms), detection_timestamp__lt=ms_datetime(until_ms)
        )
        .values_list("user_id")
        .annotate(anomalies=Count("*"))
        .order_by("-anomalies", "user_id")[:limit]
    )
    return [(user_id, anomalies) for user_id, anomalies in rows]
