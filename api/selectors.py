"""Read-only questions that span the apps: the /metrics report and the /health checks."""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from confluent_kafka.admin import AdminClient
from django.conf import settings
from django.core.cache import cache

from anomalies_app.models import AnomalyStatus, Severity
from anomalies_app.rules import DEFAULT_RULES
from anomalies_app.selectors import anomaly_counts, anomaly_top_users
from eventpipeline.celery import workers_ping
from signals_app.messages import ms_to_datetime
from signals_app.models import SignalType
from signals_app.selectors import HOUR_MS, dead_letter_counts, signal_counts, signal_top_users

logger = logging.getLogger(__name__)

TOP_USERS = 10


def pipeline_metrics_recent(*, hours: int) -> dict[str, Any]:
    """`pipeline_metrics` of the `hours` up to now, computed at most once every
    METRICS_CACHE_SECONDS for each `hours` and shared by every api process (the cache is
    Redis). The report's `until` says when it was computed. Counting a month of signals
    is slow on a large table (docs/performance.md, "The /metrics report"): a dashboard
    polling it, or sixteen of them, must not make PostgreSQL do it on every request. With
    Redis away it is computed each time."""
    now_ms = int(time.time() * 1000)
    if settings.METRICS_CACHE_SECONDS <= 0:
        return pipeline_metrics(hours=hours, until_ms=now_ms)
    key = f"metrics-report:{hours}"
    try:
        report: dict[str, Any] | None = cache.get(key)
    except redis.RedisError as error:
        logger.warning("metrics cache not read, computing: %s", error)
        return pipeline_metrics(hours=hours, until_ms=now_ms)
    if report is None:
        report = pipeline_metrics(hours=hours, until_ms=now_ms)
        try:
            cache.set(key, report, timeout=settings.METRICS_CACHE_SECONDS)
        except redis.RedisError as error:
            logger.warning("metrics cache not written: %s", error)
    return report


def pipeline_metrics(*, hours: int, until_ms: int) -> dict[str, Any]:
    """Counts, rates and breakdowns of the `hours` before `until_ms`.

    Signals are placed by event time (`timestamp`), anomalies by detection time, dead
    letters by the time they were received. `by_hour` has one entry per clock hour that
    the period touches, oldest first, empty hours included (the first and last are partial).
    """
    since_ms = until_ms - hours * HOUR_MS
    signals = signal_counts(since_ms=since_ms, until_ms=until_ms)
    anomalies = anomaly_counts(since_ms=since_ms, until_ms=until_ms)
    dead_letters = dead_letter_counts(since_ms=since_ms, until_ms=until_ms)

    signals_by_type = Counter(dict.fromkeys(SignalType.values, 0))
    signals_by_hour: Counter[int] = Counter()
    for (hour, signal_type), count in signals.items():
        signals_by_type[signal_type] += count
        signals_by_hour[hour] += count
    anomalies_by_type = Counter(dict.fromkeys(DEFAULT_RULES, 0))
    by_severity = Counter(dict.fromkeys(Severity.values, 0))
    by_status = Counter(dict.fromkeys(AnomalyStatus.values, 0))
    anomalies_by_hour: Counter[int] = Counter()
    for row in anomalies:
        anomalies_by_type[row.anomaly_type] += row.anomalies
        by_severity[row.severity] += row.anomalies
        by_status[row.status] += row.anomalies
        anomalies_by_hour[row.hour] += row.anomalies

    total_signals = sum(signals_by_type.values())
    total_anomalies = sum(anomalies_by_type.values())
    total_dead_letters = sum(dead_letters.values())
    hours_of = range(since_ms // HOUR_MS, (until_ms - 1) // HOUR_MS + 1)
    return {
        "hours": hours,
        "since": ms_to_datetime(since_ms),
        "until": ms_to_datetime(until_ms),
        "signals": {
            "total": total_signals,
            "per_second": round(total_signals / (hours * 3600), 3),
            "by_type": dict(signals_by_type),
        },
        "anomalies": {
            "total": total_anomalies,
            "per_hour": round(total_anomalies / hours, 3),
            "per_1000_signals": round(1000 * total_anomalies / total_signals, 3) if total_signals else None,
            "by_type": dict(anomalies_by_type),
            "by_severity": dict(by_severity),
            "by_status": dict(by_status),
        },
        "dead_letters": {"total": total_dead_letters, "per_hour": round(total_dead_letters / hours, 3)},
        "by_hour": [
            {
                "hour": ms_to_datetime(hour * HOUR_MS),
                "signals": signals_by_hour[hour],
                "anomalies": anomalies_by_hour[hour],
                "dead_letters": dead_letters.get(hour, 0),
            }
            for hour in hours_of
        ],
        "top_users": {
            "by_signals": [
                {"user_id": user_id, "signals": count}
                for user_id, count in signal_top_users(since_ms=since_ms, until_ms=until_ms, limit=TOP_USERS)
            ],
            "by_anomalies": [
                {"user_id": user_id, "anomalies": count}
                for user_id, count in anomaly_top_users(since_ms=since_ms, until_ms=until_ms, limit=TOP_USERS)
            ],
        },
    }


# --- health -------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


# Every check ends by itself within its timeout, whatever the server does: one that
# accepts a connection and never answers must cost a /health request `timeout`, not a
# thread that waits for ever. (libpq, which psycopg follows, waits at least 2 s to connect.)
def postgresql_timeout(timeout: float) -> int:
    return max(2, math.ceil(timeout))


def _postgresql(timeout: float) -> str:
    # A connection of its own rather than Django's: connect_timeout bounds the whole
    # handshake, which needs the server to answer, and the statement has its own bound, set
    # for its transaction only: PgBouncer refuses the startup parameter `options`, and in
    # transaction mode a session's setting would outlive this check on another client.
    seconds = postgresql_timeout(timeout)
    with psycopg.connect(settings.DATABASE_URL, connect_timeout=seconds) as pg:
        pg.execute("SELECT set_config('statement_timeout', %s, true)", [str(seconds * 1000)])
        pg.execute("SELECT 1")
    return "answered"


def _redis(timeout: float) -> str:
    # The same server may play several parts; each is asked once and named when it fails.
    parts: dict[str, list[str]] = {}
    for part, url in (
        ("results", settings.REDIS_URL),
        ("broker", settings.CELERY_BROKER_URL),
        ("detection", settings.DETECT_REDIS_URL),
    ):
        if url.startswith(("redis", "unix")):
            parts.setdefault(url, []).append(part)
    failed = []
    for url, names in parts.items():
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            client.ping()
        except redis.RedisError as error:
            logger.warning("health: redis (%s) did not answer: %s", ", ".join(names), error)
            failed.append(f"{' and '.join(names)}: {type(error).__name__}")
        finally:
            client.close()
    if failed:
        raise HealthCheckFailed("; ".join(failed))
    return "answered"


@functools.cache
def _kafka_admin(bootstrap_servers: str) -> AdminClient:
    # log_level 0: a broker that is away would otherwise log every reconnect attempt.
    return AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})


def _kafka(timeout: float) -> str:
    brokers = _kafka_admin(settings.KAFKA_BOOTSTRAP_SERVERS).list_topics(timeout=timeout).brokers
    if not brokers:
        raise HealthCheckFailed("no broker in the cluster metadata")
    return f"{len(brokers)} broker(s)"


def _celery(timeout: float) -> str:
    answered = workers_ping(timeout=timeout, limit=1)
    if not answered:
        raise HealthCheckFailed(f"no worker answered a ping within {timeout:g} s")
    return f"{answered[0]} answered"


class HealthCheckFailed(Exception):
    """A check's own verdict, said as it is (other errors are named by their type)."""


HEALTH_CHECKS: dict[str, Callable[[float], str]] = {
    "postgresql": _postgresql,
    "redis": _redis,
    "kafka": _kafka,
    "celery": _celery,
}


def _run(name: str, check: Callable[[float], str], timeout: float) -> CheckResult:
    started = time.monotonic()
    try:
        detail = check(timeout)
    except HealthCheckFailed as failure:
        return CheckResult(name, False, str(failure))
    except Exception as error:  # noqa: BLE001 - any error of a check is its verdict, not a 500
        # The full error goes to the log only: /health answers without authentication.
        logger.warning("health: %s failed: %s", name, error)
        return CheckResult(name, False, f"{type(error).__name__}; the api's log has the details")
    return CheckResult(name, True, f"{detail} in {1000 * (time.monotonic() - started):.0f} ms")


def health_check(*, timeout: float) -> list[CheckResult]:
    """Every check at once, each in a thread of its own given `timeout` seconds, all of
    them ended before the answer. Each check bounds itself (above), so the threads end on
    their own; one that did not would be reported as failed and named in the log, never
    waited for past the deadline."""
    results: dict[str, CheckResult] = {}

    def run(name: str, check: Callable[[float], str]) -> None:
        results[name] = _run(name, check, timeout)

    threads = [
        threading.Thread(target=run, args=(name, check), name=f"health-{name}", daemon=True)
        for name, check in HEALTH_CHECKS.items()
    ]
    for thread in threads:
        thread.start()
    # Past the slowest check's own bound: PostgreSQL's connect, or the broker's socket timeout.
    deadline = time.monotonic() + postgresql_timeout(timeout) + timeout + 1
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            logger.error("health: %s outlived its timeout of %g s", thread.name, timeout)
    return [results.get(name, CheckResult(name, False, f"no answer within {timeout:g} s")) for name in HEALTH_CHECKS]
