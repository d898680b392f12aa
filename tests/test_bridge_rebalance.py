"""The bridge's side of a rebalance, on a consumer that records what it is asked (pure: no
server). The same on real servers, with bridges coming and going mid-run: test_scaling.py."""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import TopicPartition

from bridge.consumer import Bridge, BridgeOptions, InFlightBatch
from signals_app.messages import Limits

TOPIC = "signals"


class RecordingConsumer:
    """What the bridge asks of its Kafka consumer around a rebalance."""

    def __init__(self) -> None:
        self.commits: list[dict[int, int]] = []

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits.append({tp.partition: tp.offset for tp in offsets})

    def assignment(self) -> list[TopicPartition]:
        return []

    def pause(self, partitions: Any) -> None:
        pass

    def resume(self, partitions: Any) -> None:
        pass


def bridge_with(consumer: RecordingConsumer) -> Bridge:
    options = BridgeOptions(
        topic=TOPIC,
        dlq_topic="dlq",
        batch_size=500,
        batch_timeout_s=0.2,
        max_in_flight=3,
        redispatch_after_s=60,
        limits=Limits(max_bytes=65536, max_age_ms=86_400_000, max_skew_ms=300_000),
    )
    return Bridge(options=options, consumer=consumer, dlq_producer=None)  # type: ignore[arg-type]


def in_flight(bridge: Bridge, batch_id: str, offsets: dict[int, tuple[int, int]]) -> None:
    """A batch read and handed over, not yet done (as consume_batch leaves it)."""
    bridge.in_flight[batch_id] = InFlightBatch(batch_id, TOPIC, rows=[], received_at=0.0, offsets=offsets)
    bridge.tracker.add(batch_id, {(TOPIC, partition): last for partition, (_, last) in offsets.items()})


def revoke(bridge: Bridge, consumer: RecordingConsumer, *partitions: int) -> None:
    bridge._on_revoke(consumer, [TopicPartition(TOPIC, partition) for partition in partitions])  # type: ignore[arg-type]


def test_a_revoke_commits_what_is_done_and_lets_go_of_batches_only_on_revoked_partitions() -> None:
    consumer = RecordingConsumer()
    bridge = bridge_with(consumer)
    bridge.assigned = frozenset({(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)})
    in_flight(bridge, "done", {0: (0, 99)})
    in_flight(bridge, "on-0", {0: (100, 199)})
    in_flight(bridge, "on-0-and-1", {0: (200, 249), 1: (0, 49)})
    in_flight(bridge, "on-2", {2: (0, 99)})
    bridge._finish(bridge.in_flight["done"], now=1.0)

    revoke(bridge, consumer, 0, 1)

    assert consumer.commits == [{0: 100}], "what is done is committed before the partitions go"
    # The records of "on-0" come again to the partition's next owner; "on-0-and-1" is
    # theirs too now. Neither counts against BRIDGE_MAX_IN_FLIGHT nor is handed over again.
    assert set(bridge.in_flight) == {"on-2"}
    assert bridge.assigned == {(TOPIC, 2)}
    bridge._finish(bridge.in_flight["on-2"], now=2.0)
    bridge.commit()
    assert consumer.commits[-1] == {2: 100}


def test_a_batch_also_on_a_partition_still_owned_is_still_waited_for() -> None:
    consumer = RecordingConsumer()
    bridge = bridge_with(consumer)
    in_flight(bridge, "on-0-and-1", {0: (0, 49), 1: (0, 49)})
    in_flight(bridge, "on-1", {1: (50, 99)})

    revoke(bridge, consumer, 0)

    assert set(bridge.in_flight) == {"on-0-and-1", "on-1"}
    bridge._finish(bridge.in_flight["on-1"], now=1.0)
    bridge.commit()
    assert consumer.commits == [], "partition 1 waits for the batch read before"
    bridge._finish(bridge.in_flight["on-0-and-1"], now=2.0)
    bridge.commit()
    assert consumer.commits == [{1: 100}], "partition 0 is not this bridge's to commit any more"


def test_letting_go_of_batches_on_revoked_partitions_ends_the_pause_they_caused() -> None:
    """Three batches in flight (BRIDGE_MAX_IN_FLIGHT) pause the bridge; once their partitions
    are gone there is nothing to wait for, and the partitions it gets next are read."""
    consumer = RecordingConsumer()
    bridge = bridge_with(consumer)
    for number in range(3):
        in_flight(bridge, f"b{number}", {number: (0, 99)})
    bridge.apply_backpressure()
    assert bridge.paused

    revoke(bridge, consumer, 0, 1, 2)
    bridge.apply_backpressure()
    assert not bridge.paused and bridge.in_flight == {}


def test_lost_partitions_are_not_committed_and_their_batches_are_let_go() -> None:
    """Partitions the group took while the bridge was away (stopped past max.poll.interval.ms):
    another bridge may have committed past them, so what this one finished there is not
    committed over it (issue 13's zombie)."""
    consumer = RecordingConsumer()
    bridge = bridge_with(consumer)
    bridge.assigned = frozenset({(TOPIC, 0), (TOPIC, 1)})
    in_flight(bridge, "done-on-0", {0: (0, 99)})
    in_flight(bridge, "on-0", {0: (100, 199)})
    in_flight(bridge, "done-on-1", {1: (0, 99)})
    bridge._finish(bridge.in_flight["done-on-0"], now=1.0)
    bridge._finish(bridge.in_flight["done-on-1"], now=1.0)

    bridge._on_lost(consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]

    assert consumer.commits == [], "nothing is committed as partitions are lost"
    assert set(bridge.in_flight) == set() and bridge.assigned == {(TOPIC, 1)}
    bridge.commit()
    assert consumer.commits == [{1: 100}], "only the partition still owned is committed"


class AwayConsumer(RecordingConsumer):
    """A consumer whose next poll tells of partitions lost, as librdkafka does once it sees
    that max.poll.interval.ms passed."""

    def __init__(self) -> None:
        super().__init__()
        self.bridge: Bridge | None = None
        self.lost: list[TopicPartition] = []
        self.polls = 0

    def poll(self, timeout: float) -> None:
        self.polls += 1
        if self.lost and self.bridge is not None:
            lost, self.lost = self.lost, []
            self.bridge._on_lost(self, lost)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.01
        return self.now


def done_before_a_stop(consumer: AwayConsumer, clock: Clock) -> Bridge:
    """A bridge owning partition 0, with a batch on it done but not committed, whose
    partition the group gives away while the bridge is stopped."""
    bridge = Bridge(options=bridge_with(consumer).options, consumer=consumer, dlq_producer=None, clock=clock)  # type: ignore[arg-type]
    consumer.bridge = bridge
    bridge.assigned = frozenset({(TOPIC, 0)})
    in_flight(bridge, "done-before-the-stop", {0: (0, 99)})
    bridge._finish(bridge.in_flight["done-before-the-stop"], now=clock())
    consumer.lost = [TopicPartition(TOPIC, 0)]
    return bridge


def test_a_bridge_back_from_a_long_stop_asks_the_group_before_it_commits() -> None:
    clock = Clock()
    consumer = AwayConsumer()
    bridge = done_before_a_stop(consumer, clock)
    # The last turn ended long ago (SIGSTOP); meanwhile the group gave partition 0 away.
    bridge.last_polled_at = clock.now - 40

    bridge.commit()

    assert consumer.polls > 1, "it polled before committing"
    assert consumer.commits == [], "it did not commit over the partition's new owner"


def test_a_bridge_that_was_not_away_commits_at_once() -> None:
    consumer = AwayConsumer()
    clock = Clock()
    options = bridge_with(consumer).options
    bridge = Bridge(options=options, consumer=consumer, dlq_producer=None, clock=clock)  # type: ignore[arg-type]
    in_flight(bridge, "done", {0: (0, 99)})
    bridge._finish(bridge.in_flight["done"], now=clock())
    bridge.last_polled_at = clock.now - 1

    bridge.commit()

    assert consumer.polls == 0 and consumer.commits == [{0: 100}]


class PausingConsumer(RecordingConsumer):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[int]]] = []

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("assign", [p.partition for p in partitions]))

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("pause", [p.partition for p in partitions]))

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("resume", [p.partition for p in partitions]))


def test_assigned_partitions_are_read_unless_the_bridge_is_paused() -> None:
    """librdkafka keeps a partition's pause across its unassignment: a partition paused as
    it was lost (the bridge was waiting, paused) would come back paused and never be read."""
    consumer = PausingConsumer()
    bridge = bridge_with(consumer)
    partitions = [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)]

    bridge._on_assign(consumer, partitions)  # type: ignore[arg-type]
    assert consumer.calls == [("assign", [0, 1]), ("resume", [0, 1])]

    consumer.calls.clear()
    bridge.paused = True
    bridge._on_assign(consumer, partitions)  # type: ignore[arg-type]
    assert consumer.calls == [("assign", [0, 1]), ("pause", [0, 1])]


class Record:
    """A record as confluent-kafka hands it over, malformed (a dead letter)."""

    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return b"not json"

    def key(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)


class ReadingConsumer(RecordingConsumer):
    def consume(self, num_messages: int, timeout: float) -> list[Record]:
        return [Record(0, 10), Record(1, 20)]


def test_a_partition_revoked_while_its_dead_letters_are_written_is_not_committed(monkeypatch: Any) -> None:
    """The dead letters are written beside the loop, which goes on polling, so a rebalance
    can take a partition of the batch meanwhile: its offsets are then the new owner's."""
    written = threading.Event()
    monkeypatch.setattr("bridge.dead_letters.dead_letters_write", lambda *_: written.wait(10))
    consumer = ReadingConsumer()
    bridge = bridge_with(consumer)
    bridge.assigned = frozenset({(TOPIC, 0), (TOPIC, 1)})

    bridge.consume_batch()
    revoke(bridge, consumer, 0)
    written.set()
    deadline = time.monotonic() + 10
    while bridge.in_flight and time.monotonic() < deadline:
        bridge.collect_results()
    bridge.commit()

    assert consumer.commits == [{1: 21}], "partition 0 went to another bridge during the write"


def test_a_revoke_after_a_long_stop_commits_without_polling_from_inside_the_poll() -> None:
    """The revoke callback runs inside librdkafka's poll: its commit must not poll again."""
    consumer = RecordingConsumer()  # no poll(): polling would fail here
    bridge = bridge_with(consumer)
    in_flight(bridge, "done", {0: (0, 99)})
    bridge._finish(bridge.in_flight["done"], now=1.0)
    bridge.last_polled_at = bridge.clock() - 100

    revoke(bridge, consumer, 0)

    assert consumer.commits == [{0: 100}]


class StoppedInsideConsume(AwayConsumer):
    """The process stopped inside consume(): it returns records at once after SIGCONT,
    before librdkafka has told of the partitions lost meanwhile (its next poll does)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.clock.now += 40  # SIGSTOP ... SIGCONT
        return []


def test_a_stop_inside_a_poll_is_noticed_before_the_next_commit() -> None:
    clock = Clock()
    consumer = StoppedInsideConsume(clock)
    bridge = done_before_a_stop(consumer, clock)

    bridge.consume_batch()  # held 40 s inside, returns at once after SIGCONT
    bridge.commit()

    assert consumer.commits == [], "it asked the group first, and learnt partition 0 was lost"
