"""An unreachable Kafka is reported once, plainly; so is a topic with too few partitions.
The bridge's consumer settings, and a record larger than its fetch cap."""

from __future__ import annotations

import base64
import logging
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from django.conf import settings
from django.test import override_settings

from eventpipeline.kafka import KafkaUnreachable, consumer_config, producer_config, topics_ensure
from tests.conftest import REPO


@override_settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
def test_an_unreachable_broker_is_one_clear_error(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(KafkaUnreachable, match=r"cannot reach Kafka at KAFKA_BOOTSTRAP_SERVERS=127\.0\.0\.1:1"):
        topics_ensure(["any-topic"], partitions=1, timeout=1)
    assert "Connect to" not in capfd.readouterr().err, "librdkafka's reconnect lines should not flood the terminal"


@pytest.mark.integration
def test_a_topic_with_fewer_partitions_is_left_as_it_is_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A topic made when TOPIC_PARTITIONS was 4 is not changed by a bridge or `create_topics`
    that now asks for 12: raising partitions moves keys, so the operator does it on purpose."""
    topic = f"test-few-partitions-{uuid.uuid4().hex[:10]}"
    assert topics_ensure([topic], partitions=4) == [topic]
    with caplog.at_level(logging.WARNING, logger="eventpipeline.kafka"):
        assert topics_ensure([topic], partitions=12) == []
    assert [record.getMessage() for record in caplog.records] == [
        f"topic {topic} has 4 partitions, fewer than TOPIC_PARTITIONS=12: at most 4 bridges can share it. "
        'It is left as it is; to raise its partitions, see docs/operations.md, "Raising partitions"'
    ]
    admin = AdminClient({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS})
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 4
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="eventpipeline.kafka"):
        topics_ensure([topic], partitions=4)
    assert not caplog.records, "a topic with the partitions asked for is no news"


@override_settings(KAFKA_SESSION_TIMEOUT_MS=6000, KAFKA_MAX_POLL_INTERVAL_MS=30000)
def test_the_bridge_consumer_is_a_static_member_with_short_timeouts() -> None:
    """(docs/design.md, "Consumer group")"""
    config = consumer_config("group", instance_id="bridge-a")
    assert config["group.instance.id"] == "bridge-a"
    assert config["session.timeout.ms"] == 6000
    assert config["heartbeat.interval.ms"] == 600
    assert config["max.poll.interval.ms"] == 30000
    assert "group.instance.id" not in consumer_config("group", instance_id=""), "empty: a dynamic member"


@override_settings(BATCH_TIMEOUT_MS=200)
def test_a_full_read_ahead_is_fetched_again_within_a_batch_timeout() -> None:
    """Once the read-ahead holds queued.max.messages.kbytes, librdkafka waits
    fetch.queue.backoff.ms before it fetches a partition again. Its default, 1 s, let the
    bridge's queue run dry under a backlog and `consume` wait for records that were there
    (docs/performance.md, "The read-ahead's back-off"); the wait must be a small part of a
    batch's timeout (the default one), and not 0, at which librdkafka's fetcher spins."""
    config = consumer_config("group")
    assert 0 < config["fetch.queue.backoff.ms"] <= settings.BATCH_TIMEOUT_MS / 4
    assert config["queued.max.messages.kbytes"] == 4096, "the read-ahead that makes partitions take turns"


def test_the_default_instance_id_is_the_host_name() -> None:
    """Unique per container under compose replicas, stable across a container's restarts."""
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "--no-imports",
            "-c",
            "from django.conf import settings; print(settings.BRIDGE_INSTANCE_ID)",
        ],
        cwd=REPO,
        env={name: value for name, value in os.environ.items() if name != "BRIDGE_INSTANCE_ID"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"bridge-{socket.gethostname()}"


@pytest.mark.integration
def test_a_record_larger_than_the_bridges_fetch_cap_still_comes() -> None:
    """The bridge's fetches are capped at 128 KB so that partitions take turns after a
    backlog (docs/design.md, "Consumer group"); a record far above the cap, and one lz4
    cannot shrink below it, must still be read, alone in its fetch, and not stall its
    partition."""
    topic = f"test-fetch-cap-{uuid.uuid4().hex[:10]}"
    topics_ensure([topic], partitions=1)
    config = consumer_config(f"group-{topic}")
    config.update({"session.timeout.ms": 6000, "heartbeat.interval.ms": 600})  # a quick join on Tansu
    assert config["fetch.max.bytes"] == 128 * 1024
    big = base64.b64encode(os.urandom(700_000))  # some 930 KB, random: compressed it stays that large
    values = [b'{"n": 1}', big, b'{"n": 2}', big, b'{"n": 3}']
    producer = Producer(producer_config())
    for value in values:
        producer.produce(topic, value)
    assert producer.flush(15) == 0
    consumer = Consumer(config)
    consumer.subscribe([topic])
    read: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while len(read) < len(values) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None:
                assert message.error() is None, message.error()
                read.append(message.value() or b"")
    finally:
        consumer.close()
    assert read == values
