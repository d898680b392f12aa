"""Read-only queries on signals and dead letters."""

from __future__ import annotations

import uuid
from datetime import datetime

from django.db import connection
from django.db.models import Count, F, QuerySet
from django.db.models.functions import TruncHour

from signals_app.messages import BIGINT_MAX, ms_to_datetime
from signals_app.models import DeadLetter, Signal

HOUR_MS = 3_600_000


def signal_list(*, user_id: int | None = None) -> QuerySet[Signal]:
    """Signals, newest event first; one user's if `user_id` is given."""
    signals = Signal.objects.order_by("-timestamp", "-id")
    return signals if user_id is None else signals.filter(user_id=user_id)


def search_term_parse(term: str) -> int | uuid.UUID | None:
    """What a term typed in an admin search box names: a user id (a whole number a bigint
    holds) or an event id (a UUID). None for anything else, which then matches nothing:
    a search never scans a large table for a substring."""
    term = term.strip()
    if term.isascii() and term.isdigit():
        return int(term) if int(term) <= BIGINT_MAX else None
    try:
        return uuid.UUID(term)
    except ValueError:
        return None


def signal_counts(*, since_ms: int, until_ms: int) -> dict[tuple[int, str], int]:
    """Signals with event time in [since_ms, until_ms), per (hour since the epoch, type)."""
    rows = (
        Signal.objects.filter(timestamp__gte=since_ms, timestamp__lt=until_ms)
        .annotate(hour=F("timestamp") / HOUR_MS)
        .values_list("hour", "type")
        .annotate(signals=Count("*"))
        .order_by()
    )
    return {(hour, signal_type): signals for hour, signal_type, signals in rows}


def signal_top_users(*, since_ms: int, until_ms: int, limit: int) -> list[tuple[int, int]]:
    """(user_id, signals) of the users with the most signals in [since_ms, until_ms)."""
    rows = (
        Signal.objects.filter(timestamp__gte=since_ms, timestamp__lt=until_ms)
        .values_list("user_id")
        .annotate(signals=Count("*"))
        .order_by("-signals", "user_id")[:limit]
    )
    return [(user_id, signals) for user_id, signals in rows]


def hour_of(moment: datetime) -> int:
    """Hours since the epoch: the key of the per-hour counts."""
    return int(moment.timestamp()) // 3600


def dead_letter_counts(*, since_ms: int, until_ms: int) -> dict[int, int]:
    """Dead letters received in [since_ms, until_ms), per hour since the epoch."""
    rows = (
        DeadLetter.objects.filter(received_at__gte=ms_to_datetime(since_ms), received_at__lt=ms_to_datetime(until_ms))
        .annotate(hour=TruncHour("received_at"))
        .values_list("hour")
        .annotate(dead_letters=Count("*"))
        .order_by()
    )
    return {hour_of(hour): dead_letters for hour, dead_letters in rows}


def signal_newest_stored() -> Signal | None:
    """The event stored last: the one with the highest id.

    Ids come from one sequence, so that row is among the last ids handed out; the BRIN
    index on id finds those in the latest blocks of each partition, where an ORDER BY id
    over the whole partitioned table would read it all (docs/design.md, "Partitions"). A
    wider window covers ids a failed COPY took and never stored; none in the last ten
    million is None, said as "none stored" rather than a scan of every partition."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sequence_last_value(pg_get_serial_sequence('signals', 'id')::regclass)")
        last = cursor.fetchone()[0]
    if last is None:
        return None
    newest = Signal.objects.order_by("-id").only("timestamp", "created_at")
    for window in (10_000, 10_000_000):
        found = newest.filter(id__gt=last - window).first()
        if found is not None:
            return found
    return None  # none among the last ten million ids: none stored lately


def dead_letter_reasons(*, since: datetime, limit: int = 10) -> tuple[int, list[tuple[str, int]]]:
    """Dead letters received since `since`: how many, and the `limit` commonest reasons
    with their counts."""
    received = DeadLetter.objects.filter(received_at__gte=since)
    reasons = received.values_list("reason").annotate(count=Count("*")).order_by("-count", "reason")[:limit]
    return received.count(), [(reason, count) for reason, count in reasons]
