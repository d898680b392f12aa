"""Read-only queries on signals."""

from __future__ import annotations

from django.db.models import QuerySet

from signals_app.models import Signal


def signal_list() -> QuerySet[Signal]:
    """Signals, newest event first."""
    return Signal.objects.order_by("-timestamp", "-id")
