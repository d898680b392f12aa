"""Celery doors into the signal services: parse input, call one service, report."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from celery import Task, shared_task
from django.conf import settings

from eventpipeline.celery import BatchTask, batch_task_retry, batch_task_start
from eventpipeline.metrics import BATCH_SIZE_CURRENT, EVENTS_PROCESSED, PROCESSING_LATENCY
from signals_app.services import UNREACHABLE, StoreResult, signals_dead_letter_batch, signals_store_batch

logger = logging.getLogger(__name__)


@shared_task(bind=True, base=BatchTask, acks_late=True, max_retries=settings.STORE_MAX_RETRIES)
def store_signals(self: Task, topic: str, rows: list[list[Any]], batch_id: str | None = None) -> dict[str, int]:
    """Store a batch of accepted events (SignalRows from `topic`) exactly once.

    `batch_id` is the bridge's name for the batch, for the logs (eventpipeline/logs.py);
    messages queued before there was one have none.

    What happens when it does not go in, by cause:
    - PostgreSQL refuses an event's content: that event alone becomes a dead letter (the
      service splits the batch to find it), the rest is stored.
    - PostgreSQL or the DLQ topic cannot be reached: retried with back-off,
      STORE_MAX_RETRIES times, then the task fails. The bridge has not committed these
      offsets and hands the batch over again later: good events never become dead letters
      because a server was away.
    - Anything else (a bug, a schema out of date): retried likewise, then the whole batch
      is kept as dead letters with the reason, to replay after the fix, instead of looping.
    """
    started = time.perf_counter()
    batch_task_start(self)
    BATCH_SIZE_CURRENT.set(len(rows))
    try:
        result = signals_store_batch(topic=topic, rows=rows)
    except Exception as error:  # noqa: BLE001 - retried or re-raised; only a lasting fault falls through
        batch_task_retry(self, error, max_retries=settings.STORE_MAX_RETRIES, unreachable=UNREACHABLE)
        reason = f"could not be stored after {self.request.retries + 1} attempts: {type(error).__name__}: {error}"
        logger.error("batch %s: giving up on its %d events: %s", batch_id, len(rows), reason)
        dead = signals_dead_letter_batch(topic=topic, rows=rows, reason=reason.strip())
        EVENTS_PROCESSED.labels(status="dead_letter").inc(dead)
        return store_report(batch_id, StoreResult(stored=0, duplicates=0, dead_letters=dead))
    EVENTS_PROCESSED.labels(status="stored").inc(result.stored)
    EVENTS_PROCESSED.labels(status="duplicate").inc(result.duplicates)
    EVENTS_PROCESSED.labels(status="dead_letter").inc(result.dead_letters)
    PROCESSING_LATENCY.observe(time.perf_counter() - started)
    return store_report(batch_id, result)


def store_report(batch_id: str | None, result: StoreResult) -> dict[str, int]:
    """What the task returns, and logs under the batch's id (docs/operations.md, "Following a batch")."""
    counts = dataclasses.asdict(result)
    logger.info("batch %s: stored %d events, %d duplicates, %d dead letters", batch_id, *counts.values(), extra=counts)
    return counts
