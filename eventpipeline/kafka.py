"""Kafka client configuration and topic upkeep, shared by every process that talks to Kafka."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from django.conf import settings
from django.core.management.base import CommandError

logger = logging.getLogger(__name__)


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


def consumer_config(group_id: str, *, instance_id: str = "", **overrides: Any) -> dict[str, Any]:
    """The bridge's consumer. With an `instance_id` it is a static member of its group
    (KIP-345): restarted under the same id it gets its partitions back at once, and a
    stop does not make the group rebalance (docs/design.md, "Consumer group")."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
        "group.id": group_id,
        # Offsets are committed by hand, only after the events below them are stored.
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": settings.KAFKA_SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": max(settings.KAFKA_SESSION_TIMEOUT_MS // 10, 100),
        # Also the rebalance timeout a join waits for the other members (KIP-62).
        "max.poll.interval.ms": settings.KAFKA_MAX_POLL_INTERVAL_MS,
        "enable.partition.eof": False,
        # After a backlog (PostgreSQL away for a minute), the partitions must take turns,
        # or the one read last waits 30 s and more behind the others (docs/design.md,
        # "Consumer group"). Three limits, because brokers honour different ones:
        # - how far librdkafka reads ahead into its one queue, all partitions together.
        #   Its default, 64 MB, is some 200,000 events; 4 MB is still many batches ahead.
        "queued.max.messages.kbytes": 4096,
        # - how much of one partition a fetch brings (Apache Kafka honours it; librdkafka's
        #   default, 1 MB, is some 3,000 events, six batches of one partition).
        "max.partition.fetch.bytes": 256 * 1024,
        # - how much one fetch brings in all. Tansu ignores the limit per partition and
        #   fills a fetch from its first partition up to this one, counted compressed
        #   (lz4 makes 1 MB some 9,000 events); librdkafka starts each fetch one partition
        #   further on, so at 128 KB the partitions take turns every couple of batches.
        #   librdkafka raises fetch.max.bytes to message.max.bytes, which bounds only the
        #   requests this consumer sends; a larger record still comes, alone in its fetch.
        "fetch.max.bytes": 128 * 1024,
        "message.max.bytes": 128 * 1024,
        # Once the read-ahead is full, librdkafka puts off fetching each partition again for
        # this long. Its default, 1 s, is longer than the bridge takes to work through 4 MB:
        # the queue ran dry and `consume` waited, up to BATCH_TIMEOUT_MS, holding a backlog to
        # some 23,000 events/s where 20 ms gave 31,000. At 0 librdkafka's fetcher spins: the
        # bridge's CPU doubled (docs/performance.md, "The read-ahead's back-off").
        "fetch.queue.backoff.ms": 20,
    }
    if instance_id:
        config["group.instance.id"] = instance_id
    config.update(overrides)
    return config


class KafkaUnreachable(CommandError):
    """Kafka did not answer: one line for the operator instead of librdkafka's retries."""


def topics_ensure(topics: list[str], *, partitions: int, timeout: float = 15.0) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    An existing topic with fewer partitions is left as it is, with a warning: raising them
    moves most keys to other partitions, and an operator picks the moment
    (docs/operations.md, "Raising partitions")."""
    # log_level 0: an unreachable broker would print a line per reconnect attempt; the
    # exception below says it once.
    admin = AdminClient({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "log_level": 0})
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as error:
        raise KafkaUnreachable(
            f"cannot reach Kafka at KAFKA_BOOTSTRAP_SERVERS={settings.KAFKA_BOOTSTRAP_SERVERS} "
            f"within {timeout:.0f} s ({error.args[0].str()})"
        ) from error
    for name in topics:
        if name in existing and len(existing[name].partitions) < partitions:
            logger.warning("%s", partitions_short(name, len(existing[name].partitions), partitions))
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


def partitions_short(topic: str, has: int, wanted: int) -> str:
    """The warning for a topic made before TOPIC_PARTITIONS was raised."""
    return (
        f"topic {topic} has {has} partitions, fewer than TOPIC_PARTITIONS={wanted}: at most {has} bridges "
        'can share it. It is left as it is; to raise its partitions, see docs/operations.md, "Raising partitions"'
    )


# --- consumer lag ---------------------------------------------------------------------
# How long a log-end probe reads at most: the records that follow the reported high
# watermark are at most one producer batch (see `log_end_offsets`), read well within this.
LOG_END_PROBE_SECONDS = 3.0


@dataclass(frozen=True)
class PartitionLag:
    """One partition of a consumer group's topic: what the group committed (None before
    its first commit), the log's start and end, and the records between."""

    topic: str
    partition: int
    committed: int | None
    log_start: int
    log_end: int

    @property
    def lag(self) -> int:
        """Records not yet committed; before the first commit, counted from the log's start
        (the bridge reads from the earliest record then)."""
        position = self.committed if self.committed is not None else self.log_start
        return max(self.log_end - position, 0)


def log_end_probe() -> Consumer:
    """A consumer that only reads offsets: assigned by hand, never in a group, never commits."""
    return Consumer(
        {
            "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
            "group.id": "eventpipeline-log-end-probe",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            # An empty fetch at the end of a partition answers after this long, not 500 ms.
            "fetch.wait.max.ms": 100,
            "log_level": 0,
        }
    )


def log_end_offsets(probe: Consumer, topic: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
    """Per partition, (log start, log end): the end is the offset after the last record
    that can be read, right on Apache Kafka and on Tansu alike.

    Tansu reports a partition's high watermark as the base offset of its last record batch
    plus one, whatever the number of records in that batch (docs/operations.md, "Reading
    pipeline_status"): too low by the batch's records less one. Apache Kafka reports it
    exactly. So the reported watermark is a lower bound on both, and the records at and
    after it are at most one batch: read from there to the partition's end (librdkafka
    says when it gets there, partition EOF) and the end is past the last record read, or
    the watermark itself when nothing follows it, as always on Kafka.
    """
    starts: dict[int, int] = {}
    ends: dict[int, int] = {}
    for partition in partitions:
        starts[partition], ends[partition] = probe.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=10, cached=False
        )
    if not partitions:
        return {}
    probe.assign([TopicPartition(topic, partition, ends[partition]) for partition in partitions])
    waiting = set(partitions)
    deadline = time.monotonic() + LOG_END_PROBE_SECONDS
    try:
        while waiting and time.monotonic() < deadline:
            for message in probe.consume(num_messages=10_000, timeout=0.2):
                at_partition, at_offset, error = message.partition(), message.offset(), message.error()
                if at_partition not in ends or at_offset is None:
                    continue
                if error is None:
                    ends[at_partition] = max(ends[at_partition], at_offset + 1)
                elif error.code() == KafkaError._PARTITION_EOF:
                    ends[at_partition] = max(ends[at_partition], at_offset)
                    waiting.discard(at_partition)
    finally:
        probe.unassign()
    return {partition: (starts[partition], ends[partition]) for partition in partitions}


def committed_offsets(admin: AdminClient, group_id: str, topic: str, partitions: list[int]) -> dict[int, int | None]:
    """What the consumer group committed per partition (None where it never did), asked
    without joining the group."""
    request = ConsumerGroupTopicPartitions(group_id, [TopicPartition(topic, p) for p in partitions])
    answer = admin.list_consumer_group_offsets([request], request_timeout=10)[group_id].result(timeout=15)
    return {tp.partition: tp.offset if tp.offset >= 0 else None for tp in answer.topic_partitions}


def topic_partitions(admin: AdminClient, topic: str) -> list[int]:
    metadata = admin.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None:
        raise KafkaException(metadata.error if metadata is not None else f"no topic {topic}")
    return sorted(metadata.partitions)


def consumer_lag(
    *, probe: Consumer, admin: AdminClient, group_id: str, topic: str, partitions: list[int] | None = None
) -> list[PartitionLag]:
    """The group's lag on `topic` (on `partitions`, or on all of them): log end, by the
    one method of `log_end_offsets`, less the group's committed offset."""
    wanted = topic_partitions(admin, topic) if partitions is None else sorted(partitions)
    if not wanted:
        return []
    committed = committed_offsets(admin, group_id, topic, wanted)
    ends = log_end_offsets(probe, topic, wanted)
    return [
        PartitionLag(topic, partition, committed.get(partition), log_start=start, log_end=end)
        for partition, (start, end) in sorted(ends.items())
    ]
