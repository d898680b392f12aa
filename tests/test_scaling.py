"""Several bridges and workers per queue, and partitions moving while batches are in flight
(issue 13, "Several bridges and workers").

Two bridges in one consumer group, two store workers and two detect workers, on a topic of
12 partitions (TOPIC_PARTITIONS' default). During a 200,000-event run (the size the issue
asks for) of plain load with an injection run woven in and malformed records mixed in, a
third bridge joins and leaves ten times: each time it takes partitions from the other two
(they are revoked with batches in flight), reads, and goes while its own batches are in
flight, by SIGTERM or by `kill -9`. Judged as a user would: every event stored once, every
malformed record one dead letter, `verify_detection` 1.0 for every rule.

Real broker, Redis, PostgreSQL, bridge and worker processes (tests/conftest.py, `Pipeline`).
"""

from __future__ import annotations

import random
import re
import signal
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from django.conf import settings

from emitter.models import InjectionRun
from signals_app.models import DeadLetter, Signal
from tests.conftest import Pipeline, free_port, wait_for
from tests.test_detection_pipeline import verify_detection
from tests.test_pipeline import START_MS, _malformed_records, expected_event_ids

pytestmark = pytest.mark.integration

# The load lasts about 155 s, longer than the ten bridge cycles (10 to 20 s each here:
# two rebalances, see add_and_remove_a_bridge), so that every bridge that leaves has
# batches in flight.
PLAIN_EVENTS, PLAIN_RATE = 170_000, 1100
INJECTED_EVENTS, INJECTED_RATE = 30_000, 200  # at least 30,000: the run ends with its scenarios
MALFORMED = 1_000
CYCLES = 10
KILLED_CYCLES = {3, 7}  # kill -9; SIGTERM in the others
# A bridge's log lines when it is given partitions, and when they are taken from it:
# "assigned [('topic', 3), ...]", "revoked [('topic', 3), ...]; ...".
REBALANCED = re.compile(r"bridge\.consumer: (assigned|revoked) \[([^\]]*)\]")
PARTITION = re.compile(r", (\d+)\)")  # the partition of one ('topic', 3) in such a line
# ... and when it handed a batch to Celery.
DISPATCHED = re.compile(r"batch \S+: \d+ events.*; to store and detect")


def start_bridge(pipeline: Pipeline, name: str) -> None:
    """A bridge with its own static membership id (two bridges on one host must each have
    one: docs/configuration.md, BRIDGE_INSTANCE_ID)."""
    pipeline.start_bridge(name, BRIDGE_INSTANCE_ID=name)


def produce_malformed(producer: Producer, pipeline: Pipeline, count: int, delivered: set[tuple[int, int]]) -> None:
    """`count` malformed records of every kind, keyed by nobody (so on any partition)."""
    kinds = _malformed_records()

    def remember(error: object, message: object) -> None:
        assert error is None, error
        delivered.add((message.partition(), message.offset()))  # type: ignore[attr-defined]

    for index in range(count):
        producer.produce(pipeline.topic, value=kinds[index % len(kinds)][0], on_delivery=remember)
    producer.poll(0)


def dlq_coordinates(pipeline: Pipeline, wanted: set[tuple[int, int]], timeout: float = 60) -> set[tuple[int, int]]:
    """The source (partition, offset) of the records on the DLQ topic, read from the
    beginning until every one `wanted` is seen (or `timeout`). Assigned, not subscribed:
    no group to join."""
    consumer = Consumer({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "group.id": "dlq-check"})
    partitions = consumer.list_topics(pipeline.dlq_topic, timeout=10).topics[pipeline.dlq_topic].partitions
    consumer.assign([TopicPartition(pipeline.dlq_topic, partition, OFFSET_BEGINNING) for partition in partitions])
    seen: set[tuple[int, int]] = set()
    deadline = time.monotonic() + timeout
    try:
        while not wanted <= seen and time.monotonic() < deadline:
            for record in consumer.consume(1000, timeout=1.0):
                headers = dict(record.headers() or [])
                if record.error() is None:
                    seen.add((int(headers["source_partition"] or -1), int(headers["source_offset"] or -1)))
    finally:
        consumer.close()
    return seen


def holds_partitions(pipeline: Pipeline, name: str) -> bool:
    """Whether the bridge's last word on its partitions is that it was given some."""
    changes = REBALANCED.findall(pipeline.log_of(name))
    return bool(changes) and changes[-1][0] == "assigned" and "(" in changes[-1][1]


def add_and_remove_a_bridge(pipeline: Pipeline, cycle: int, rng: random.Random) -> float:
    """Start a third bridge, wait until all three hold partitions and it has handed over a
    batch, then stop it while its batches are in flight. Returns the seconds until all
    three held partitions."""
    name = f"bridge-3-{cycle}"
    started = time.monotonic()
    # Dynamic membership for the bridge that comes and goes: a static member that stops
    # does not leave the group (KIP-345), so its partitions would wait for the session
    # timeout before moving, every cycle; the two that stay are static, as in compose.
    pipeline.start_bridge(name, BRIDGE_INSTANCE_ID="")
    # The two that stay must have their share again too: on Tansu a rebalance gives static
    # members their partitions a session timeout after it starts (dynamic ones, half of
    # it), so without this wait a third bridge coming and going faster than that keeps
    # the other two without partitions (measured: 40 s at a time).
    wait_for(
        lambda: all(holds_partitions(pipeline, bridge) for bridge in ("bridge-1", "bridge-2", name)),
        timeout=60,
        what=f"{name}, bridge-1 and bridge-2 to hold partitions",
    )
    assigned_after = time.monotonic() - started
    wait_for(lambda: bool(DISPATCHED.search(pipeline.log_of(name))), timeout=30, what=f"{name} to hand over a batch")
    time.sleep(rng.uniform(0.0, 0.5))
    if cycle in KILLED_CYCLES:
        pipeline.kill(name, signal.SIGKILL)
    else:
        assert pipeline.stop(name, timeout=60) == 0, pipeline.log_tail()
    return assigned_after


def where_the_group_stands(pipeline: Pipeline, total: int) -> str:
    """For a run that did not end: stored against emitted, per partition the committed
    offset against the end, and each bridge's state, last word on its partitions and last
    warnings. A partition behind its end that no bridge holds is a group that did not
    settle; every partition at its end with signals missing would be a loss."""
    ends, committed = pipeline.end_offsets(), pipeline.committed_offsets()
    lines = [
        f"stored {Signal.objects.count()} of {total}; committed/end per partition: "
        + " ".join(f"[{partition}]{committed.get(partition, 0)}/{end}" for partition, end in sorted(ends.items()))
    ]
    for name in sorted(pipeline.log_paths):
        if not name.startswith("bridge"):
            continue
        text = pipeline.log_of(name)
        changes = REBALANCED.findall(text)
        warnings = [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line][-5:]
        exited = pipeline.processes[name].poll()
        running = "running" if exited is None else f"exited with {exited}"
        last = f"{changes[-1][0]} {PARTITION.findall(changes[-1][1])}" if changes else "no rebalance"
        lines.append(f"{name} ({running}): last {last}")
        lines += [f"    {line[:300]}" for line in warnings]
    return "\n".join(lines)


@pytest.mark.topic_partitions(12)
def test_bridges_joining_and_leaving_mid_run_lose_and_duplicate_nothing(pipeline: Pipeline) -> None:
    rng = random.Random(13)
    for index in (1, 2):
        pipeline.start_worker(f"store-{index}", queues=[pipeline.queue], WORKER_METRICS_PORT=str(free_port()))
        pipeline.start_worker(f"detect-{index}", queues=[pipeline.detect_queue], WORKER_METRICS_PORT=str(free_port()))
        start_bridge(pipeline, f"bridge-{index}")

    plain = pipeline.start_emitter(
        "--count", str(PLAIN_EVENTS), "--rate", str(PLAIN_RATE), "--seed", "31", "--users", "5000",
        "--start-ms", str(START_MS), name="plain-emitter",
    )  # fmt: skip
    injected = pipeline.start_emitter(
        "--inject-anomalies", "--inject-every", "40", "--count", str(INJECTED_EVENTS), "--rate", str(INJECTED_RATE),
        "--seed", "37", "--users", "400", name="injection-emitter",
    )  # fmt: skip
    producer = pipeline.producer()
    malformed: set[tuple[int, int]] = set()
    joins = []
    for cycle in range(CYCLES):
        produce_malformed(producer, pipeline, MALFORMED // CYCLES, malformed)
        joins.append(add_and_remove_a_bridge(pipeline, cycle, rng))
    stored_after_cycles = Signal.objects.count()
    assert producer.flush(30) == 0
    assert plain.wait(timeout=300) == 0, pipeline.log_tail()
    assert injected.wait(timeout=300) == 0, pipeline.log_tail()
    run = InjectionRun.objects.get()
    total = PLAIN_EVENTS + run.events
    assert stored_after_cycles < total, "the bridges came and went after the run: nothing was tested"

    load_ended = time.monotonic()
    try:
        wait_for(lambda: Signal.objects.count() >= total, timeout=240, what=f"{total} stored signals")
        wait_for(pipeline.all_committed, timeout=120, what="offsets committed up to the end")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{where_the_group_stands(pipeline, total)}") from None
    # 0 lost, 0 duplicated: the plain events are exactly those emitted, and the injection
    # run's every event once (the table's unique key makes a second copy impossible, so
    # counts against what was emitted tell both).
    plain_ids = set(Signal.objects.filter(user_id__lt=run.first_user_id).values_list("event_id", flat=True))
    assert {str(event_id) for event_id in plain_ids} == expected_event_ids(
        seed=31, users=5000, count=PLAIN_EVENTS, rate=PLAIN_RATE
    )
    run_rows = Signal.objects.filter(user_id__gte=run.first_user_id, user_id__lte=run.last_user_id)
    assert run_rows.count() == run_rows.values("event_id").distinct().count() == run.events
    assert Signal.objects.count() == total
    # Every malformed record is one dead letter, with its coordinates; each is on the DLQ
    # topic too (a record read again after a kill -9 may be published again there).
    assert len(malformed) == MALFORMED
    kept = set(DeadLetter.objects.values_list("source_partition", "source_offset"))
    assert DeadLetter.objects.count() == MALFORMED and kept == malformed
    assert dlq_coordinates(pipeline, malformed) == malformed
    verify_detection(pipeline)
    print(
        f"all three bridges held partitions after {', '.join(f'{seconds:.1f}' for seconds in joins)} s; "
        f"{time.monotonic() - load_ended:.0f} s from the end of the load to the end of the checks"
    )
