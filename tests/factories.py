"""Test data: signal messages and stored events."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from signals_app.messages import SignalRow

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
