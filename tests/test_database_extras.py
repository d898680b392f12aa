"""The SQL functions and views users call directly (docs/design.md, "Database extras")."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import DataError, connection
from django.utils import timezone

from anomalies_app.models import Anomaly
from signals_app.models import DeadLetter, Signal

pytestmark = pytest.mark.django_db

NOW_MS = int(time.time() * 1000)
DAY_MS = 86_400_000


def fetch(sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
        columns = [column.name for column in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def signal(user_id: int, signal_type: str = "click", age_ms: int = 0) -> Signal:
    import uuid

    return Signal.objects.create(
        event_id=uuid.uuid4(), user_id=user_id, type=signal_type, timestamp=NOW_MS - age_ms, payload={}
    )


def anomaly(user_id: int, severity: str, age: timedelta = timedelta(0), **fields: Any) -> Anomaly:
    return Anomaly.objects.create(
        user_id=user_id,
        anomaly_type="high_value_purchase",
        severity=severity,
        description="test",
        detection_timestamp=timezone.now() - age,
        **fields,
    )


def test_risk_score_weighs_recent_anomalies_by_severity() -> None:
    for _ in range(3):
        signal(123)
    signal(123, age_ms=40 * DAY_MS)
    anomaly(123, "high")
    anomaly(123, "high")
    anomaly(123, "medium")
    anomaly(123, "low")
    anomaly(123, "high", status="false_positive")
    anomaly(123, "high", age=timedelta(days=40))
    anomaly(999, "high")
    [row] = fetch("SELECT * FROM get_user_risk_score(%s)", [123])
    assert row == {
        "user_id": 123,
        "total_signals": 3,
        "total_anomalies": 4,
        "high_severity": 2,
        "medium_severity": 1,
        "low_severity": 1,
        "risk_score": 27,
        "risk_level": "medium",
    }


def test_risk_score_of_an_unknown_user_is_zero_and_capped_at_100() -> None:
    [row] = fetch("SELECT * FROM get_user_risk_score(%s)", [5])
    assert (row["total_signals"], row["risk_score"], row["risk_level"]) == (0, 0, "low")
    for _ in range(11):
        anomaly(6, "high")
    [row] = fetch("SELECT risk_score, risk_level FROM get_user_risk_score(%s)", [6])
    assert row == {"risk_score": 100, "risk_level": "high"}


def test_cleanup_old_data_drops_the_days_before_the_cutoff_and_keeps_open_anomalies() -> None:
    """Signals go a day's partition at a time; anomalies still waiting for an analyst stay
    unless p_include_open (docs/design.md, "Retention")."""
    signal(1, age_ms=31 * DAY_MS)
    signal(1, age_ms=32 * DAY_MS)
    signal(1, age_ms=29 * DAY_MS)
    anomaly(1, "low", age=timedelta(days=31), status="resolved")
    anomaly(1, "low", age=timedelta(days=31), status="new", suppressed=True)
    anomaly(1, "low", age=timedelta(days=31), status="acknowledged")
    anomaly(1, "low", age=timedelta(days=1))
    DeadLetter.objects.create(
        raw=b"x", source_topic="t", source_partition=0, source_offset=1, reason="r",
        received_at=timezone.now() - timedelta(days=31),
    )  # fmt: skip
    assert fetch("SELECT * FROM cleanup_old_data(30)") == [
        {"signals_deleted": 2, "anomalies_deleted": 2, "dead_letters_deleted": 1, "anomalies_kept": 1}
    ]
    assert (Signal.objects.count(), Anomaly.objects.count(), DeadLetter.objects.count()) == (1, 2, 0)
    assert fetch("SELECT * FROM cleanup_old_data(30, p_include_open => true)") == [
        {"signals_deleted": 0, "anomalies_deleted": 1, "dead_letters_deleted": 0, "anomalies_kept": 0}
    ]
    assert list(Anomaly.objects.values_list("status", flat=True)) == ["new"]


def test_cleanup_old_data_refuses_a_cutoff_below_one_day() -> None:
    with pytest.raises(DataError, match="days must be at least 1"):
        fetch("SELECT * FROM cleanup_old_data(0)")


def test_recent_signal_stats_counts_the_last_24_hours_per_type() -> None:
    signal(1, "click")
    signal(2, "click")
    signal(2, "click")
    signal(3, "login")
    signal(4, "login", age_ms=2 * DAY_MS)
    rows = {row["signal_type"]: row for row in fetch("SELECT * FROM recent_signal_stats")}
    assert {t: (r["signal_count"], r["unique_users"]) for t, r in rows.items()} == {"click": (3, 2), "login": (1, 1)}


def test_recent_anomaly_stats_groups_by_type_and_severity() -> None:
    anomaly(1, "high")
    anomaly(2, "high")
    anomaly(2, "low")
    anomaly(3, "low", age=timedelta(days=2))
    rows = fetch("SELECT anomaly_type, severity, anomaly_count, unique_users FROM recent_anomaly_stats ORDER BY 2")
    assert rows == [
        {"anomaly_type": "high_value_purchase", "severity": "high", "anomaly_count": 2, "unique_users": 2},
        {"anomaly_type": "high_value_purchase", "severity": "low", "anomaly_count": 1, "unique_users": 1},
    ]
