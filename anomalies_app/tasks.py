"""Celery door into detection: parse input, call one service, report."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task, shared_task
from django.conf import settings

from anomalies_app.services import AnomalyPublishError, anomalies_detect_batch
from anomalies_app.windows import EpochLost
from eventpipeline.celery import BatchTask, batch_task_retry, batch_task_start
from eventpipeline.metrics import EVENTS_PROCESSED
from signals_app.services import UNREACHABLE

logger = logging.getLogger(__name__)

# Servers away: the batch must be analysed later, never skipped.
DETECT_UNREACHABLE = (
    *UNREACHABLE,
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,  # full, not wrong: retry, do not skip
    # A Redis Cluster with a node away or its slots moving (redis.cluster.RedisCluster).
    redis.exceptions.ClusterError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
    EpochLost,
    AnomalyPublishError,
)


@shared_task(bind=True, base=BatchTask, acks_late=True, max_retries=settings.DETECT_MAX_RETRIES)
def detect_anomalies(
    self: Task, topic: str, rows: list[list[Any]], batch_id: str | None = None
) -> dict[str, int | str]:
    """Analyse a batch of accepted events (SignalRows from `topic`) for anomalies.

    `batch_id` is the bridge's name for the batch, for the logs (eventpipeline/logs.py);
    messages queued before there was one have none.

    Safe to run any number of times on the same batch. When it fails:
    - PostgreSQL, Redis or Kafka cannot be reached: retried with back-off, DETECT_MAX_RETRIES times, then the task
      fails, and the bridge, which has not committed the offsets, hands the batch over again.
    - The windows are lost after it analysed the batch (their generation, returned as
      `windows`, changed before the batch was stored): the bridge hands it over again.
    - Anything else (a bug): retried likewise, then the batch is counted as
      `events_processed{status="detect_failed"}` and logged, so that one bad batch does
      not stop the pipeline; the events are stored and can be analysed again by replay.
    """
    batch_task_start(self)
    try:
        result = anomalies_detect_batch(rows=rows)
    except Exception as error:
        batch_task_retry(self, error, max_retries=settings.DETECT_MAX_RETRIES, unreachable=DETECT_UNREACHABLE)
        logger.exception("batch %s: giving up analysing its %d events from %s", batch_id, len(rows), topic)
        EVENTS_PROCESSED.labels(status="detect_failed").inc(len(rows))
        return {"analysed": 0, "created": 0, "updated": 0, "failed": len(rows)}
    EVENTS_PROCESSED.labels(status="analysed").inc(result.analysed)
    logger.info(
        "batch %s: analysed %d events, raised anomalies %s, updated %d, muted %d",
        batch_id,
        result.analysed,
        result.created or "none",
        len(result.updated),
        len(result.muted),
        extra={
            "analysed": result.analysed,
            "anomalies_raised": result.created,
            "anomalies_updated": result.updated,
            "anomalies_muted": result.muted,
        },
    )
    done: dict[str, int | str] = {
        "analysed": result.analysed,
        "created": len(result.created),
        "updated": len(result.updated),
        "failed": 0,
    }
    if result.windows_generation is not None:
        # The bridge has the batch analysed again if this changed (bridge/consumer.py).
        done["windows"] = result.windows_generation
    return done
