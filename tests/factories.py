"""Test data: signal messages, stored signals, anomalies and dead letters."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import Any

from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group, User
from django.db.models import Model
from django.utils import timezone

from anomalies_app.models import Anomaly
from signals_app.messages import SignalRow
from signals_app.models import DeadLetter, Signal

PAYLOADS: dict[str, dict[str, Any]] = {
    "login": {"login_method": "password", "success": True, "location": "Berlin, DE", "ip_address": "10.1.2.3"},
    "purchase": {"amount": 19.99, "currency": "EUR", "product_id": "p-42", "payment_method": "credit_card"},
    "api_call": {"endpoint": "/api/v1/items", "method": "GET", "status_code": 200, "response_time_ms": 12.5},
    "click": {"page": "/home", "element": "buy-button"},
    "file_access": {"path": "/reports/q3.pdf", "action": "read"},
}


def signal_message(signal_type: str = "click", **changes: Any) -> dict[str, Any]:
    """A valid signal message; `changes` replace fields, `...` removes one."""
    message: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "user_id": 42,
        "type": signal_type,
        "timestamp": int(time.time() * 1000),
        "payload": dict(PAYLOADS[signal_type]),
    }
    message.update(changes)
    return {key: value for key, value in message.items() if value is not ...}


def encoded(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def signal_row(*, offset: int = 0, partition: int = 0, signal_type: str = "click", **changes: Any) -> list[Any]:
    """An accepted event as the bridge hands it to the store task (a SignalRow, as JSON delivers it)."""
    message = signal_message(signal_type, **changes)
    row = SignalRow(
        message["event_id"],
        message["user_id"],
        message["type"],
        message["timestamp"],
        json.dumps(message["payload"]),
        partition,
        offset,
    )
    return list(row)


def signal_create(
    *, user_id: int = 42, signal_type: str = "click", timestamp: int | None = None, **fields: Any
) -> Signal:
    """A stored signal (as the pipeline would have stored it)."""
    return Signal.objects.create(
        event_id=uuid.uuid4(),
        user_id=user_id,
        type=signal_type,
        timestamp=int(time.time() * 1000) if timestamp is None else timestamp,
        payload=dict(PAYLOADS[signal_type]),
        **fields,
    )


def anomaly_create(
    *,
    user_id: int = 42,
    anomaly_type: str = "high_value_purchase",
    severity: str = "medium",
    status: str = "new",
    detection_timestamp: datetime | None = None,
    description: str = "",
    **fields: Any,
) -> Anomaly:
    """A stored anomaly (as detection would have raised it)."""
    return Anomaly.objects.create(
        user_id=user_id,
        anomaly_type=anomaly_type,
        severity=severity,
        status=status,
        description=description or f"{anomaly_type} for user {user_id}",
        detection_timestamp=timezone.now() if detection_timestamp is None else detection_timestamp,
        **fields,
    )


def dead_letter_create(*, offset: int, reason: str = "not JSON", received_at: datetime | None = None) -> DeadLetter:
    return DeadLetter.objects.create(
        raw=b"{oops",
        source_topic="signal-events",
        source_partition=0,
        source_offset=offset,
        reason=reason,
        received_at=timezone.now() if received_at is None else received_at,
    )


def staff_create(name: str, *groups: str) -> User:
    """A staff user in these groups ("analysts", "rule editors"), read back fresh:
    permissions are cached per instance."""
    user = User.objects.create_user(name, password="a-long-enough-password", is_staff=True)
    user.groups.add(*Group.objects.filter(name__in=groups))
    return User.objects.get(pk=user.pk)


def analyst_create(name: str = "ana") -> User:
    return staff_create(name, "analysts")


def history(obj: Model) -> list[str]:
    """The lines of an object's history in the admin (LogEntry), oldest first."""
    return list(
        LogEntry.objects.filter(object_id=str(obj.pk), content_type__model=obj._meta.model_name)
        .order_by("id")
        .values_list("change_message", flat=True)
    )
