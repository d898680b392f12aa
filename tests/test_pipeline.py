"""The spine end to end: emit_signals -> Kafka -> run_bridge -> Celery worker -> PostgreSQL.

Real broker, real Redis, real PostgreSQL, real bridge and worker processes; each test on
its own topic and queue.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import redis
from django.conf import settings

from emitter.generator import SignalGenerator
from signals_app.models import DeadLetter, Signal
from tests.conftest import REPO, Pipeline, dlq_reasons, wait_for

pytestmark = pytest.mark.integration

START_MS = int(time.time() * 1000) - 3_600_000


def expected_event_ids(*, seed: int, users: int, count: int, rate: int) -> set[str]:
    generator = SignalGenerator(seed=seed, users=users, start_ms=START_MS, rate=rate)
    return {generator.next()["event_id"] for _ in range(count)}


def stored_event_ids() -> set[str]:
    return {str(event_id) for event_id in Signal.objects.values_list("event_id", flat=True)}


def wait_until_stored(pipeline: Pipeline, count: int, timeout: float = 180) -> None:
    wait_for(lambda: Signal.objects.count() >= count, timeout=timeout, what=f"{count} stored signals")
    wait_for(pipeline.all_committed, timeout=60, what="offsets committed up to the end")


def test_emitted_events_are_stored_exactly_once_and_a_replay_changes_nothing(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    pipeline.start_bridge()
    pipeline.emit("--count", "10000", "--rate", "5000", "--seed", "11", "--users", "500", "--start-ms", str(START_MS))

    wait_until_stored(pipeline, 10_000)
    assert Signal.objects.count() == 10_000
    assert stored_event_ids() == expected_event_ids(seed=11, users=500, count=10_000, rate=5000)

    # The same Kafka records, consumed again from the beginning by a new consumer group.
    pipeline.replay()
    assert Signal.objects.count() == 10_000
    assert pipeline.worker_metric("events_processed_total", status="duplicate") == 10_000
    assert pipeline.worker_metric("events_processed_total", status="stored") == 10_000
    assert DeadLetter.objects.count() == 0


def _malformed_records() -> list[tuple[bytes, str]]:
    """One of each kind of bad record, with a phrase its dead letter's reason must contain."""
    now = int(time.time() * 1000)
    good = {"user_id": 5, "type": "click", "timestamp": now, "payload": {"page": "/", "element": "a"}}

    def variant(**changes: object) -> bytes:
        message = {**good, **changes}
        return json.dumps({k: v for k, v in message.items() if v is not ...}).encode()

    return [
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"{this is not json", "not JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (variant(timestamp=...), "missing field 'timestamp'"),
        (variant(user_id="abc"), "field 'user_id' must be an integer, got string \"abc\""),
        (variant(timestamp="yesterday"), "field 'timestamp' must be an integer"),
        (variant(type="logout"), "field 'type' must be one of"),
        (variant(timestamp=now * 1000), "field 'timestamp'"),
        (variant(timestamp=1_640_995_200), "looks like seconds"),
        (variant(payload={"page": "/"}), "missing field 'payload.element'"),
        (variant(event_id="not-a-uuid"), "field 'event_id' must be a UUID"),
        (variant(payload={"page": "/", "element": "x" * 70_000}), "oversize"),
        (b"", "empty message"),
        (
            variant(payload={"page": "/", "element": "a", "deep": json.loads("[" * 300 + "]" * 300)}),
            "nested too deeply",
        ),
        (b"[" * 2000 + b"]" * 2000, "not JSON: depth limit exceeded"),
        (
            b'{"user_id": ' + b"[" * 1000 + b"]" * 1000 + b', "type": "click", "timestamp": 1, "payload": {}}',
            "field 'user_id' must be an integer, got array (nested too deeply to show)",
        ),
    ]


def test_malformed_records_become_dead_letters_and_every_good_one_is_stored(pipeline: Pipeline) -> None:
    kinds = _malformed_records()
    generator = SignalGenerator(seed=3, users=200, start_ms=int(time.time() * 1000) - 60_000, rate=1000)
    good = [generator.next() for _ in range(5000)]
    # One record near Kafka's 1 MB message limit: its DLQ copy must be cut to fit.
    huge = (json.dumps({"user_id": 1, "padding": "x" * 950_000}).encode(), "oversize")
    bad = [kinds[i % len(kinds)] for i in range(999)] + [huge]

    delivered: dict[int, tuple[int, int]] = {}
    producer = pipeline.producer()
    bad_index = 0
    for index, event in enumerate(good):
        producer.produce(pipeline.topic, key=str(event["user_id"]), value=json.dumps(event).encode())
        if index % 5 == 0:
            raw = bad[bad_index][0]

            def remember(error: object, message: object, slot: int = bad_index) -> None:
                delivered[slot] = (message.partition(), message.offset())  # type: ignore[attr-defined]

            producer.produce(pipeline.topic, value=raw, on_delivery=remember)
            bad_index += 1
    assert producer.flush(30) == 0
    assert len(delivered) == 1000

    pipeline.start_worker()
    pipeline.start_bridge()
    wait_for(lambda: DeadLetter.objects.count() >= 1000, timeout=120, what="1000 dead letters")
    wait_until_stored(pipeline, 5000)

    assert Signal.objects.count() == 5000
    assert stored_event_ids() == {event["event_id"] for event in good}
    dead_letters = {
        (d.source_partition, d.source_offset): d for d in DeadLetter.objects.filter(source_topic=pipeline.topic)
    }
    assert len(dead_letters) == 1000
    for slot, (raw, phrase) in enumerate(bad):
        dead_letter = dead_letters[delivered[slot]]
        assert phrase in dead_letter.reason, (raw[:60], dead_letter.reason)
        assert bytes(dead_letter.raw) == raw

    # The same refusals are published on the DLQ topic, with the reason in a header.
    reasons = dlq_reasons(pipeline.dlq_topic, 1000)
    assert len(reasons) == 1000
    assert sorted(reasons) == sorted(d.reason for d in dead_letters.values())


def lose_redis_state(pipeline: Pipeline) -> None:
    """What a Redis restart without persistence does to this pipeline: its queued and
    unacknowledged tasks, its task results and its detection windows are gone (only this
    test's keys are touched)."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(pipeline.queue, pipeline.detect_queue, "unacked", "unacked_index", "unacked_mutex")
    for pattern in ("celery-task-meta-*", f"{pipeline.key_prefix}:*"):
        for key in client.scan_iter(pattern):
            client.delete(key)


@pytest.mark.parametrize("victim", ["bridge", "worker", "redis"])
def test_a_crash_mid_run_loses_and_duplicates_nothing(pipeline: Pipeline, victim: str) -> None:
    """kill -9 of the bridge, or of the worker, or the worker killed and Redis losing every
    task and result, in the middle of a run; then the process starts again."""
    pipeline.start_worker()
    # The tasks a killed worker held, or Redis lost, come back when the bridge re-dispatches
    # them: at once after Redis lost its data, BRIDGE_REDISPATCH_SECONDS (20) after their
    # hand-over for those a killed worker held.
    pipeline.start_bridge()
    emitter = pipeline.start_emitter(
        "--count", "40000", "--rate", "4000", "--seed", "23", "--users", "1000", "--start-ms", str(START_MS)
    )
    wait_for(lambda: Signal.objects.count() > 8000, timeout=120, what="the run to be under way")
    pipeline.kill("bridge" if victim == "bridge" else "worker", signal.SIGKILL)
    stored_at_kill = Signal.objects.count()
    if victim == "redis":
        lose_redis_state(pipeline)
    time.sleep(1)
    if victim == "bridge":
        pipeline.start_bridge()
    else:
        pipeline.start_worker()
    assert emitter.wait(timeout=120) == 0

    wait_until_stored(pipeline, 40_000, timeout=240)
    assert stored_at_kill < 40_000, "the crash came too late to test anything"
    assert Signal.objects.count() == 40_000
    assert stored_event_ids() == expected_event_ids(seed=23, users=1000, count=40_000, rate=4000)
    assert DeadLetter.objects.count() == 0


def test_a_dead_letter_replayed_after_the_fix_is_stored(pipeline: Pipeline) -> None:
    """A record refused as oversize is stored once the limit is raised and it is replayed."""
    generator = SignalGenerator(seed=5, users=10, start_ms=int(time.time() * 1000) - 60_000, rate=10)
    big = generator.next()
    big["payload"]["note"] = "x" * 100_000
    pipeline.produce([big])

    pipeline.start_worker()
    pipeline.start_bridge()
    wait_for(lambda: DeadLetter.objects.count() == 1, timeout=60, what="the dead letter")
    assert DeadLetter.objects.get().reason.startswith("oversize")
    assert pipeline.stop("bridge") == 0

    pipeline.start_bridge("bridge-after-fix", MAX_MESSAGE_BYTES="200000")
    replay = subprocess.run(
        [sys.executable, "manage.py", "replay_dead_letters", "--topic", pipeline.topic],
        cwd=REPO,
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    assert "replayed 1 dead letters" in replay.stdout
    wait_for(lambda: Signal.objects.count() == 1, timeout=60, what="the replayed event to be stored")
    assert str(Signal.objects.get().event_id) == big["event_id"]
    assert DeadLetter.objects.get().replayed_at is not None


def test_the_bridge_pauses_while_workers_are_behind_and_stops_cleanly_on_sigint(pipeline: Pipeline) -> None:
    """With no worker running the bridge hands over BRIDGE_MAX_IN_FLIGHT batches and then
    waits, instead of filling Redis; once a worker runs everything is stored, and SIGINT
    stops the bridge with every offset committed."""
    generator = SignalGenerator(seed=8, users=100, start_ms=int(time.time() * 1000) - 600_000, rate=100)
    pipeline.produce(generator.next() for _ in range(20_000))

    pipeline.start_bridge(BRIDGE_MAX_IN_FLIGHT="4", BATCH_SIZE="500")
    queued = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    wait_for(lambda: queued.llen(pipeline.queue) == 4, timeout=60, what="4 batches queued")
    time.sleep(3)
    assert queued.llen(pipeline.queue) == 4, "the bridge kept dispatching while no worker took anything"
    assert Signal.objects.count() == 0

    pipeline.start_worker()
    wait_until_stored(pipeline, 20_000)
    assert pipeline.stop("bridge", sig=signal.SIGINT) == 0
    assert Signal.objects.count() == 20_000
    assert pipeline.all_committed()


def test_events_without_an_event_id_are_stored_once_across_a_replay(pipeline: Pipeline) -> None:
    """Their identity is their Kafka record: consumed again, they are recognised."""
    generator = SignalGenerator(seed=13, users=50, start_ms=int(time.time() * 1000) - 600_000, rate=100)
    events = [generator.next() for _ in range(3000)]
    for event in events:
        del event["event_id"]
    pipeline.produce(events)

    pipeline.start_worker()
    pipeline.start_bridge()
    wait_until_stored(pipeline, 3000)
    pipeline.replay()
    assert Signal.objects.count() == 3000
    assert pipeline.worker_metric("events_processed_total", status="duplicate") == 3000
