"""Kafka client configuration and topic upkeep, shared by every process that talks to Kafka."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from django.conf import settings
from django.core.management.base import CommandError


def producer_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        # Idempotent producer: a retried send never writes the same record twice.
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
    }
    config.update(overrides)
    return config


# How long a caller waits for Kafka to confirm what it produced before it gives up.
CONFIRM_TIMEOUT_SECONDS = 30.0


class KafkaNotConfirmed(RuntimeError):
    """Kafka did not confirm every record of a `produce_confirmed` call."""


class OutgoingRecord(NamedTuple):
    key: str | bytes | None
    value: bytes
    headers: list[tuple[str, str | bytes | None]] | None = None


def produce_confirmed(
    producer: Producer,
    topic: str,
    records: Iterable[OutgoingRecord],
    *,
    what: str,
    error: type[Exception] = KafkaNotConfirmed,
) -> int:
    """Produce every record to `topic` and wait until Kafka confirms each. Raises `error`,
    saying how many of the records (`what` names them) were not confirmed and why, when
    any was not; the caller then treats the whole call as not done, and may repeat it."""
    failures: list[str] = []

    def on_delivery(delivery_error: Any, _message: Any) -> None:
        if delivery_error is not None:
            failures.append(str(delivery_error))

    deadline = time.monotonic() + CONFIRM_TIMEOUT_SECONDS
    produced = 0
    for record in records:
        while True:
            try:
                producer.produce(
                    topic, value=record.value, key=record.key, headers=record.headers, on_delivery=on_delivery
                )
                break
            except BufferError:  # the producer's queue is full: let it send, for a while
                if time.monotonic() >= deadline:
                    raise error(f"{what} not taken by the producer for {topic}: its queue stayed full") from None
                producer.poll(0.1)
        produced += 1
    undelivered = producer.flush(max(0.0, deadline - time.monotonic()))
    if undelivered or failures:
        raise error(
            f"{undelivered + len(failures)} of {produced} {what} not confirmed by {topic}"
            + (f": {failures[0]}" if failures else "")
        )
    return produced


@functools.cache
def shared_producer() -> Producer:
    """One producer per process, made on first use (after any fork); thread-safe."""
    return Producer(producer_config())


def consumer_config(group_id: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        "group.id": group_id,
        # Offsets are committed by hand, only after the events below them are stored.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.KAFKA_SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": max(settings.KAFKA_SESSION_TIMEOUT_MS // 10, 100),
        "enable.partition.eof": False,
        "fetch.max.bytes": 16 * 1024 * 1024,
    }
    config.update(overrides)
    return config


class KafkaUnreachable(CommandError):
    """Kafka did not answer: one line for the operator instead of librdkafka's retries."""


def topics_ensure(topics: list[str], *, partitions: int, timeout: float = 15.0) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    # log_level 0: an unreachable broker would print a line per reconnect attempt; the
    # exception below says it once.
    admin = AdminClient({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "log_level": 0})
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as error:
        raise KafkaUnreachable(
            f"cannot reach Kafka at KAFKA_BOOTSTRAP_SERVERS={settings.KAFKA_BOOTSTRAP_SERVERS} "
            f"within {timeout:.0f} s ({error.args[0].str()})"
        ) from error
    missing = [name for name in topics if name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in missing],
        operation_timeout=timeout,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except KafkaException as error:
            if error.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    return created
