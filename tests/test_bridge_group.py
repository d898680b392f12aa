"""The bridge's side of the consumer-group protocol, on a stand-in consumer: it keeps
polling through every wait, a fatal error (fenced by a bridge with the same
group.instance.id) stops it with one clear line, and a close that hangs is given up
(docs/design.md, "Consumer group"). The real protocol is in tests/test_recovery.py."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition

from bridge.consumer import Bridge, BridgeOptions, close_within
from signals_app.messages import Limits


class StandInConsumer:
    """Records what the bridge asks of it; poll returns nothing."""

    def __init__(self) -> None:
        self.polls = 0
        self.paused: list[list[TopicPartition]] = []
        self.resumed: list[list[TopicPartition]] = []
        self.commits = 0
        self.closed = threading.Event()
        self.hang_on_close = False

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("signals", 0)]

    def poll(self, timeout: float) -> None:
        self.polls += 1

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.append(partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.resumed.append(partitions)

    def commit(self, **_: Any) -> None:
        self.commits += 1

    def close(self) -> None:
        if self.hang_on_close:
            threading.Event().wait(30)
        self.closed.set()


def bridge_on(consumer: StandInConsumer) -> Bridge:
    options = BridgeOptions(
        topic="signals",
        dlq_topic="signals-dlq",
        batch_size=10,
        batch_timeout_s=0.01,
        max_in_flight=4,
        redispatch_after_s=60,
        limits=Limits(max_bytes=1000, max_age_ms=10**12, max_skew_ms=10**6),
        instance_id="bridge-a",
    )
    return Bridge(options=options, consumer=consumer, dlq_producer=None)  # type: ignore[arg-type]


def test_a_wait_pauses_the_partitions_and_keeps_polling() -> None:
    consumer = StandInConsumer()
    bridge = bridge_on(consumer)
    bridge.idle(0.3)
    assert consumer.polls >= 3, "a wait must keep serving the group protocol"
    assert consumer.paused == consumer.resumed == [[TopicPartition("signals", 0)]]
    assert not bridge.paused


def test_a_wait_leaves_partitions_paused_by_back_pressure_paused() -> None:
    consumer = StandInConsumer()
    bridge = bridge_on(consumer)
    bridge.paused = True
    bridge.idle(0.05)
    assert consumer.paused == consumer.resumed == []
    assert bridge.paused


def test_being_fenced_stops_the_bridge_with_one_line_naming_the_setting(caplog: pytest.LogCaptureFixture) -> None:
    consumer = StandInConsumer()
    bridge = bridge_on(consumer)
    fenced = KafkaError(KafkaError.FENCED_INSTANCE_ID, "Broker: Static consumer fenced by other consumer", fatal=True)
    with caplog.at_level(logging.CRITICAL, logger="bridge.consumer"):
        bridge.on_kafka_error(fenced)
        bridge.on_kafka_error(fenced)  # librdkafka may say it twice (error_cb and a message)
    assert bridge.shutdown
    assert bridge.stopped_by is not None
    assert "give each bridge its own BRIDGE_INSTANCE_ID" in bridge.stopped_by
    assert "'bridge-a'" in bridge.stopped_by
    assert [record.getMessage() for record in caplog.records] == [bridge.stopped_by]
    assert "\n" not in bridge.stopped_by

    bridge.drain()
    assert consumer.commits == 0, "a fenced consumer commits nothing"
    assert consumer.closed.is_set() and bridge.closed


def test_a_transient_error_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    bridge = bridge_on(StandInConsumer())
    with caplog.at_level(logging.WARNING, logger="bridge.consumer"):
        bridge.on_kafka_error(KafkaError(KafkaError._TRANSPORT, "broker down"))
    assert not bridge.shutdown and bridge.stopped_by is None
    assert "consumer error" in caplog.text


def test_a_close_that_hangs_is_given_up() -> None:
    consumer = StandInConsumer()
    consumer.hang_on_close = True
    assert close_within(consumer, 0.2) is False  # type: ignore[arg-type]
    consumer = StandInConsumer()
    assert close_within(consumer, 5) is True  # type: ignore[arg-type]


def test_a_refused_commit_is_logged_with_its_offsets_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    """A bridge woken after the group took it out commits into a generation that is gone:
    Kafka refuses it, and the log says so after the "committed" line."""
    bridge = bridge_on(StandInConsumer())
    with caplog.at_level(logging.WARNING, logger="bridge.consumer"):
        bridge.on_commit(None, [TopicPartition("signals", 0, 100)])
        assert caplog.records == [], "an accepted commit says nothing more"
        refused = [TopicPartition("signals", 0, 100), TopicPartition("signals", 3, 7)]
        bridge.on_commit(KafkaError(KafkaError.UNKNOWN_MEMBER_ID), refused)
    [record] = caplog.records
    assert "refused the commit of signals [0]@100 [3]@7" in record.getMessage()
    assert "UNKNOWN_MEMBER_ID" in record.getMessage()
