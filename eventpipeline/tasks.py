"""Beat's upkeep tasks: thin doors into retention and partition upkeep."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from eventpipeline.retention import TABLES, RetentionBusy, retention_apply
from signals_app.partitions import days_ahead, signals_partitions_ensure, today_utc

logger = logging.getLogger(__name__)


# Names of their own, not their modules': beat's schedule outlives a move of the code.
# Acknowledged at once, unlike the batch tasks: a long retention run must not be handed to
# another worker when the visibility timeout passes, and a lost one is made up an hour later.
@shared_task(name="eventpipeline.cleanup_old_data", acks_late=False)
def cleanup_old_data(days: int | None = None) -> dict[str, int]:
    """Retention, every hour: what `manage.py cleanup` does, with each table's own days
    (or `days` for all of them). Skipped while another run is going on."""
    per_table = dict.fromkeys(TABLES, days) if days else settings.RETENTION_DAYS_BY_TABLE
    try:
        done = retention_apply(days=per_table, include_open=False, chunk_rows=settings.RETENTION_CHUNK_ROWS)
    except RetentionBusy as busy:
        logger.info("retention skipped: %s", busy)
        return {}
    return {part.table: part.removed for part in done} | {"anomalies_kept": sum(part.kept for part in done)}


@shared_task(name="eventpipeline.signals_partitions_ahead", acks_late=False)
def signals_partitions_ahead() -> list[str]:
    """Partitions of `signals` for yesterday to SIGNALS_PARTITIONS_AHEAD_DAYS from now, so
    the store task seldom has to make one; returns those it made."""
    return signals_partitions_ensure(days=days_ahead(today=today_utc(), ahead=settings.SIGNALS_PARTITIONS_AHEAD_DAYS))
