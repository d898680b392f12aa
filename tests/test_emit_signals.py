"""`manage.py emit_signals` against a real Kafka-compatible broker (KAFKA_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Message
from django.conf import settings

from emitter.generator import SignalGenerator

PROJECT_DIR = Path(__file__).resolve().parent.parent
COUNT = 2000
RATE = 2000
SEED = 7


def topic_read(bootstrap_servers: str, topic: str, *, expected: int, timeout: float = 60.0) -> list[Message]:
    """Every record of the topic: waits for `expected`, then a little longer to catch extras."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"test-emit-signals-{uuid.uuid4()}",
            "session.timeout.ms": 6000,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(1000, timeout=1.0)
            for record in batch:
                assert record.error() is None, record.error()
                records.append(record)
            if len(records) >= expected:
                deadline = min(deadline, time.monotonic() + 2.0)
    finally:
        consumer.close()
    return records


@pytest.mark.integration
def test_emits_exactly_the_seeded_events_to_kafka() -> None:
    bootstrap_servers = settings.KAFKA_BOOTSTRAP_SERVERS
    topic = f"test-emit-signals-{uuid.uuid4()}"

    completed = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "emit_signals",
            f"--count={COUNT}",
            f"--rate={RATE}",
            f"--seed={SEED}",
            f"--topic={topic}",
            "--metrics-port=0",
            "--no-progress",
        ],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert f"emitted {COUNT} events" in completed.stdout
    assert "0 delivery errors" in completed.stdout

    records = topic_read(bootstrap_servers, topic, expected=COUNT)
    assert len(records) == COUNT
    received = []
    for record in records:
        value = record.value()
        assert value is not None
        event = json.loads(value.decode("utf-8"))
        assert record.key() == str(event["user_id"]).encode()
        received.append(event)

    # The run started its virtual clock at "now": the first event's time tells when.
    start_ms = min(event["timestamp"] for event in received)
    generator = SignalGenerator(seed=SEED, users=10_000, start_ms=start_ms, rate=RATE)
    expected = {event["event_id"]: event for event in (generator.next() for _ in range(COUNT))}
    assert {event["event_id"] for event in received} == set(expected)
    for event in received:
        assert event == expected[event["event_id"]]


@pytest.mark.integration
@pytest.mark.parametrize("length", [["--count=10"], []], ids=["a run of set length", "an endless run"])
def test_a_metrics_port_in_use_stops_only_an_endless_emitter(length: list[str]) -> None:
    """Next to a running pipeline, whose emitter holds EMITTER_METRICS_PORT, a one-off run
    (the README's `--inject-anomalies --count ...`) still emits; an endless one refuses."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        completed = subprocess.run(
            [
                *(sys.executable, "manage.py", "emit_signals", *length),
                *(f"--topic=test-emit-port-{uuid.uuid4()}", f"--metrics-port={port}", "--no-progress"),
            ],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert f"cannot serve metrics on port {port}" in completed.stderr
    if length:
        assert completed.returncode == 0, completed.stderr
        assert "emitting without metrics" in completed.stderr
        assert "emitted 10 events" in completed.stdout
    else:
        assert completed.returncode == 1
        assert "emitted" not in completed.stdout
