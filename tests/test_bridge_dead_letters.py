"""The bridge's dead letters, written beside its loop (bridge/dead_letters.py), on a
consumer that hands over malformed records (pure: the write is stood in for; the real
one, on real servers, in test_pipeline.py and `make chaos`)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from django.db import InterfaceError, OperationalError

from bridge.consumer import UNCHECKED, InFlightBatch
from tests.test_bridge_rebalance import TOPIC, Record, RecordingConsumer, bridge_with


class MalformedConsumer(RecordingConsumer):
    """Hands over `batches` batches of two malformed records on partition 0, then nothing."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.batches = batches
        self.next_offset = 0

    def consume(self, num_messages: int, timeout: float) -> list[Record]:
        if self.batches == 0:
            return []
        self.batches -= 1
        self.next_offset += 2
        return [Record(0, self.next_offset - 2), Record(0, self.next_offset - 1)]

    def poll(self, timeout: float) -> None:
        return None


class StillClock:
    """Time stands still unless the test moves it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def bridge_reading(consumer: MalformedConsumer) -> tuple[Any, StillClock]:
    bridge = bridge_with(consumer)
    bridge.clock = clock = StillClock()
    bridge.assigned = frozenset({(TOPIC, 0)})
    return bridge, clock


def until_done(bridge: Any, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while bridge.in_flight and time.monotonic() < deadline:
        bridge.collect_results()
        time.sleep(0.01)


def test_a_write_postgresql_does_not_answer_holds_its_batches_not_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """While a write hangs (a network partition), the bridge goes on reading; nothing is
    committed until the dead letters are kept, and what was handed over meanwhile is
    written together, in one round trip."""
    started, answered = threading.Event(), threading.Event()
    writes: list[int] = []

    def write(dead_letters: list[Any], topic: str, producer: Any) -> None:
        started.set()
        answered.wait(10)
        writes.append(len(dead_letters))

    monkeypatch.setattr("bridge.dead_letters.dead_letters_write", write)
    consumer = MalformedConsumer(batches=3)
    bridge, _ = bridge_reading(consumer)

    bridge.step()
    assert started.wait(10), "the first batch's write began"
    for _ in range(4):
        bridge.step()
    assert consumer.batches == 0, "every batch was read while the first write hung"
    assert consumer.commits == [] and len(bridge.in_flight) == 3, "nothing is committed before it is kept"

    answered.set()
    until_done(bridge)
    bridge.commit()
    assert writes == [2, 4], "the batches read during the first write were kept in the second"
    assert consumer.commits == [{0: 6}]


@pytest.mark.parametrize(
    "error",
    [
        OperationalError("server closed the connection unexpectedly"),
        # Not a DatabaseError in Django: a connection psycopg had already closed.
        InterfaceError("server closed the connection unexpectedly (connection already closed)"),
    ],
)
def test_a_failed_write_is_tried_again_and_only_then_committed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    attempts: list[int] = []
    failed = threading.Event()

    def write(dead_letters: list[Any], topic: str, producer: Any) -> None:
        attempts.append(len(dead_letters))
        if len(attempts) == 1:
            failed.set()
            raise error

    monkeypatch.setattr("bridge.dead_letters.dead_letters_write", write)
    consumer = MalformedConsumer(batches=1)
    bridge, clock = bridge_reading(consumer)

    with caplog.at_level(logging.ERROR, logger="bridge.consumer"):
        bridge.consume_batch()
        assert failed.wait(10)
        until_done(bridge, seconds=0.5)
        assert attempts == [2] and bridge.in_flight, "not again before DEAD_LETTER_RETRY_S"
        clock.now += 1.0
        until_done(bridge)
    bridge.commit()

    assert attempts == [2, 2]
    assert "cannot keep 2 dead letters, retrying: server closed the connection" in caplog.text
    assert consumer.commits == [{0: 2}]


def test_dead_letters_waiting_count_against_the_batches_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """BRIDGE_MAX_IN_FLIGHT (3 here) bounds what waits to be kept: the bridge pauses."""
    answered = threading.Event()
    monkeypatch.setattr("bridge.dead_letters.dead_letters_write", lambda *_: answered.wait(10))
    consumer = MalformedConsumer(batches=10)
    bridge, _ = bridge_reading(consumer)

    for _ in range(6):
        bridge.step()

    assert bridge.paused and len(bridge.in_flight) == 3 and consumer.batches == 7
    answered.set()
    until_done(bridge)
    bridge.apply_backpressure()
    assert not bridge.paused


def test_dead_letters_waiting_over_a_second_pause_the_bridge_until_kept(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL or Kafka away: the bridge stops reading instead of filling its batches in
    flight, whose tasks would pile up copies for the workers while the server is away, and
    says every DEAD_LETTER_WAIT_LOG_S what it waits for."""
    answered = threading.Event()
    monkeypatch.setattr("bridge.dead_letters.dead_letters_write", lambda *_: answered.wait(10))
    consumer = MalformedConsumer(batches=10)
    bridge, clock = bridge_reading(consumer)
    bridge.options.session_timeout_s = 60  # the clock's jumps are not a stopped process

    bridge.step()
    clock.now += 2
    with caplog.at_level(logging.INFO, logger="bridge.consumer"):
        for _ in range(3):
            bridge.step()
        clock.now += 10
        bridge.step()

    assert bridge.paused and consumer.batches == 9, "one batch read, then nothing while it waited"
    assert "dead letters of 1 batches wait to be kept, for 2.0 s: pausing" in caplog.text
    assert "still waiting for PostgreSQL to keep 2 dead letters of 1 batches, for 12 s" in caplog.text
    answered.set()
    until_done(bridge)
    bridge.step()
    assert not bridge.paused and consumer.batches == 8, "reading again once they were kept"


def test_a_batch_stored_and_analysed_waits_for_its_dead_letters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both tasks done is not enough: the offsets wait for the batch's dead letters too."""
    answered = threading.Event()
    monkeypatch.setattr("bridge.dead_letters.dead_letters_write", lambda *_: answered.wait(10))
    consumer = MalformedConsumer(batches=0)
    bridge, _ = bridge_reading(consumer)
    batch = InFlightBatch("mixed", TOPIC, rows=[], received_at=100.0, offsets={0: (0, 9)})
    batch.dead_letters = [object()]  # type: ignore[list-item]
    for name, handover in batch.handovers.items():
        handover.task_id = f"task-{name}"
    bridge.in_flight[batch.batch_id] = batch
    bridge.tracker.add(batch.batch_id, {(TOPIC, 0): 9})
    bridge.hand_dead_letters(batch)
    monkeypatch.setattr(
        bridge, "_task_states", lambda ids: (["SUCCESS"] * len(ids), [None] * len(ids), UNCHECKED, None)
    )

    bridge.collect_results()
    bridge.commit()
    assert consumer.commits == [] and "mixed" in bridge.in_flight

    answered.set()
    until_done(bridge)
    bridge.commit()
    assert consumer.commits == [{0: 10}]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread ending
def test_a_keeper_thread_that_stopped_stops_the_bridge(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dead letters handed to a keeper whose thread has ended would never be kept, and the
    bridge would wait paused for good: it stops instead, and is restarted."""

    def write(dead_letters: list[Any], topic: str, producer: Any) -> None:
        raise SystemExit  # not an Exception: it ends the thread

    monkeypatch.setattr("bridge.dead_letters.dead_letters_write", write)
    consumer = MalformedConsumer(batches=2)
    bridge, _ = bridge_reading(consumer)
    bridge.consume_batch()
    bridge.keeper.thread.join(10)
    assert not bridge.keeper.thread.is_alive()
    bridge.in_flight.clear()  # the first batch let go (a revoke): no one reads its error

    bridge.consume_batch()
    with pytest.raises(RuntimeError, match="keeper's thread has stopped"):
        bridge.collect_results()
