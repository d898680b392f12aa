"""`pipeline_status`: the whole pipeline on one screen, and whether something is wrong.

`pipeline_status_read` gathers a snapshot, one server at a time, each part on its own: a
server that does not answer leaves its part empty and says why, the rest is still shown.
`pipeline_problems` judges a snapshot against the thresholds of the settings, and the two
formatters shape it for a terminal or for a script; all three are pure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import redis
from confluent_kafka.admin import AdminClient
from django.conf import settings

from anomalies_app.selectors import rule_settings_list
from bridge.status import PERIODS_TO_LIVE, BridgeReport, bridge_report_list
from eventpipeline.celery import app as celery_app
from eventpipeline.celery import workers_ping
from eventpipeline.kafka import PartitionLag, consumer_lag, log_end_probe
from eventpipeline.queues import celery_queue_lengths, celery_queue_names
from signals_app.selectors import dead_letter_reasons, signal_newest_stored

T = TypeVar("T")


@dataclass(frozen=True)
class NewestEvent:
    stored_at: float  # seconds since the epoch
    event_ms: int


@dataclass(frozen=True)
class RuleLine:
    anomaly_type: str
    comparison: str
    threshold: float
    window_seconds: int


@dataclass(frozen=True)
class DeadLetters:
    total: int
    reasons: list[tuple[str, int]]


@dataclass(frozen=True)
class PipelineStatus:
    """One look at the pipeline. A part is None when it could not be read; `errors` says why."""

    taken_at: float  # seconds since the epoch
    topic: str
    group_id: str
    partitions: list[PartitionLag] | None = None
    queues: dict[str, int] | None = None
    workers: list[str] | None = None
    bridges: list[BridgeReport] | None = None
    newest_event: NewestEvent | None = None
    dead_letters: DeadLetters | None = None
    rules: list[RuleLine] | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def total_lag(self) -> int | None:
        return None if self.partitions is None else sum(partition.lag for partition in self.partitions)


@dataclass(frozen=True)
class Thresholds:
    max_lag: int
    max_store_age_seconds: float
    bridge_stale_seconds: float

    @classmethod
    def from_settings(cls) -> Thresholds:
        return cls(
            max_lag=settings.STATUS_MAX_LAG,
            max_store_age_seconds=settings.STATUS_MAX_STORE_AGE_SECONDS,
            bridge_stale_seconds=settings.BRIDGE_STATUS_SECONDS * PERIODS_TO_LIVE,
        )


def pipeline_status_read(*, topic: str, group_id: str, ping_timeout: float) -> PipelineStatus:
    errors: dict[str, str] = {}

    def part(name: str, read: Callable[[], T]) -> T | None:
        try:
            return read()
        except Exception as error:  # noqa: BLE001 - one server away must not hide the others
            first_line = str(error).strip().split("\n", 1)[0]
            errors[name] = f"{type(error).__name__}: {first_line}"
            return None

    def kafka_lag() -> list[PartitionLag]:
        admin = AdminClient({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "log_level": 0})
        probe = log_end_probe()
        try:
            return consumer_lag(probe=probe, admin=admin, group_id=group_id, topic=topic)
        finally:
            probe.close()

    def bridges() -> list[BridgeReport]:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        with client:
            return bridge_report_list(client=client, group_id=group_id)

    def workers() -> list[str]:
        return workers_ping(timeout=ping_timeout)

    def newest_event() -> NewestEvent | None:
        signal = signal_newest_stored()
        return None if signal is None else NewestEvent(signal.created_at.timestamp(), signal.timestamp)

    def dead_letters() -> DeadLetters:
        total, reasons = dead_letter_reasons(since=datetime.now(UTC) - timedelta(hours=1))
        return DeadLetters(total, reasons)

    def rules() -> list[RuleLine]:
        return [
            RuleLine(rule.anomaly_type, rule.comparison.value, rule.threshold, rule.window_seconds)
            for rule in rule_settings_list().values()
            if rule.enabled
        ]

    taken_at = time.time()
    partitions = part("kafka", kafka_lag)
    queues = part("queues", lambda: celery_queue_lengths(app=celery_app, queues=celery_queue_names()))
    answering = part("workers", workers)
    reports = part("bridges", bridges)
    newest = part("newest event", newest_event)
    letters = part("dead letters", dead_letters)
    enabled = part("rules", rules)
    return PipelineStatus(
        taken_at=taken_at,
        topic=topic,
        group_id=group_id,
        partitions=partitions,
        queues=queues,
        workers=answering,
        bridges=reports,
        newest_event=newest,
        dead_letters=letters,
        rules=enabled,
        errors=errors,
    )


def pipeline_problems(status: PipelineStatus, thresholds: Thresholds) -> list[str]:
    """What is wrong, one sentence each; nothing when all is well (docs/operations.md,
    "Reading pipeline_status")."""
    problems = [f"cannot read {part}: {error}" for part, error in status.errors.items()]
    lag = status.total_lag
    if lag is not None and lag > thresholds.max_lag:
        problems.append(f"consumer lag {lag} is over STATUS_MAX_LAG ({thresholds.max_lag})")
    if lag and status.errors.get("newest event") is None:
        newest = status.newest_event
        if newest is None:
            problems.append(f"{lag} records wait and no event was ever stored")
        elif status.taken_at - newest.stored_at > thresholds.max_store_age_seconds:
            problems.append(
                f"{lag} records wait and nothing was stored for {status.taken_at - newest.stored_at:.0f} s "
                f"(STATUS_MAX_STORE_AGE_SECONDS: {thresholds.max_store_age_seconds:g})"
            )
    if status.workers == []:
        problems.append("no Celery worker answered a ping")
    if status.bridges is not None:
        fresh = [b for b in status.bridges if status.taken_at - b.updated_at <= thresholds.bridge_stale_seconds]
        if not fresh:
            problems.append(f"no bridge of group {status.group_id} reports")
    return problems


def _since(status: PipelineStatus, moment: float) -> float:
    """Seconds from `moment` to the snapshot; a part read after the snapshot began is now."""
    return max(status.taken_at - moment, 0.0)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _moment(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _rule_text(rule: RuleLine) -> str:
    window = f" in {rule.window_seconds} s" if rule.window_seconds else ""
    return f"{rule.anomaly_type} ({rule.comparison} {rule.threshold:g}{window})"


def pipeline_status_text(status: PipelineStatus, problems: list[str]) -> str:
    """The operator's screen: problems first, then one block per part."""
    verdict = "OK" if not problems else f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    lines = [f"pipeline status at {_moment(status.taken_at)}: {verdict}"]
    lines += [f"  PROBLEM  {problem}" for problem in problems]

    lines += ["", f"kafka     topic {status.topic}, group {status.group_id}"]
    if status.partitions is not None:
        lines.append(f"  {'partition':>9}  {'committed':>12}  {'log end':>12}  {'lag':>10}")
        for p in status.partitions:
            committed = "-" if p.committed is None else str(p.committed)
            lines.append(f"  {p.partition:>9}  {committed:>12}  {p.log_end:>12}  {p.lag:>10}")
        lines.append(f"  {'total':>9}  {'':>12}  {'':>12}  {status.total_lag:>10}")

    if status.queues is not None:
        lines.append("queues    " + "  ".join(f"{name} {depth}" for name, depth in status.queues.items()))
    if status.workers is not None:
        lines.append("workers   " + (", ".join(status.workers) if status.workers else "none answered"))
    if status.bridges is not None:
        if not status.bridges:
            lines.append("bridges   none reporting")
        for bridge in status.bridges:
            partitions = ",".join(map(str, bridge.assigned)) or "none"
            lines.append(
                f"bridge    {bridge.host}:{bridge.pid}  in flight {bridge.in_flight}"
                f"{'  PAUSED' if bridge.paused else ''}  partitions {partitions}"
                f"  (reported {_ago(_since(status, bridge.updated_at))})"
            )
    newest = status.newest_event
    if newest is not None:
        stored = _ago(_since(status, newest.stored_at))
        lines.append(f"newest    stored {stored}, event time {_moment(newest.event_ms / 1000)}")
    elif "newest event" not in status.errors:
        lines.append("newest    none stored")
    if status.dead_letters is not None:
        lines.append(f"dead letters in the last hour: {status.dead_letters.total}")
        lines += [f"  {count:>7}  {reason[:100]}" for reason, count in status.dead_letters.reasons]
    if status.rules is not None:
        rules = [_rule_text(rule) for rule in status.rules]
        lines.append(f"rules     {len(rules)} enabled: " + (", ".join(rules) if rules else "none"))
    return "\n".join(lines)


def pipeline_status_document(status: PipelineStatus, problems: list[str]) -> dict[str, Any]:
    """The same, as one JSON object for scripts."""
    partitions = None
    if status.partitions is not None:
        partitions = [
            {"partition": p.partition, "committed": p.committed, "log_end": p.log_end, "lag": p.lag}
            for p in status.partitions
        ]
    newest = status.newest_event
    return {
        "taken_at": _moment(status.taken_at),
        "ok": not problems,
        "problems": problems,
        "topic": status.topic,
        "group_id": status.group_id,
        "partitions": partitions,
        "total_lag": status.total_lag,
        "queues": status.queues,
        "workers": status.workers,
        "bridges": None
        if status.bridges is None
        else [
            {
                "host": b.host,
                "pid": b.pid,
                "in_flight": b.in_flight,
                "paused": b.paused,
                "assigned": b.assigned,
                "lag": None if b.lag is None else {str(p): lag for p, lag in b.lag.items()},
                "reported_seconds_ago": round(_since(status, b.updated_at), 1),
            }
            for b in status.bridges
        ],
        "newest_event": None
        if newest is None
        else {
            "stored_seconds_ago": round(_since(status, newest.stored_at), 1),
            "event_time": _moment(newest.event_ms / 1000),
        },
        "dead_letters_last_hour": None
        if status.dead_letters is None
        else {
            "total": status.dead_letters.total,
            "reasons": [{"reason": reason, "count": count} for reason, count in status.dead_letters.reasons],
        },
        "enabled_rules": None if status.rules is None else [r.anomaly_type for r in status.rules],
        "errors": status.errors,
    }
