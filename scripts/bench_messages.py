"""What Celery's Redis transport costs per task, apart from the task's work, in one
process and CPU time (docs/performance.md, "A Redis client per message").

After a first round that is not counted, each round hands --tasks `store_signals` tasks
of a --batch-size batch to a queue of its own, as the bridge does, then receives, keeps
unacknowledged and acknowledges them with a kombu consumer, as a worker does, and times
each half in CPU seconds of this process.
The ways compared take turns round by round, so the machine's swings fall on all of them:
kombu's own Redis client per message against the channel's kept one
(eventpipeline/celery.py), and the kept one without kombu's acknowledgement emulation.
Last, the end-to-end histogram's CPU per record, prometheus_client's Histogram against
BatchHistogram. Needs REDIS_URL (make bench-messages starts a local Redis).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import django

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventpipeline.settings")
django.setup()

import orjson  # noqa: E402
import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from kombu import Queue  # noqa: E402
from kombu.transport import redis as kombu_redis  # noqa: E402
from prometheus_client import CollectorRegistry, Histogram  # noqa: E402

from bridge.consumer import denied_join_result  # noqa: E402
from eventpipeline.celery import app  # noqa: E402
from eventpipeline.metrics import END_TO_END_LATENCY, BatchHistogram  # noqa: E402
from signals_app.tasks import store_signals  # noqa: E402

KEPT: Any = kombu_redis.Channel._create_client  # type: ignore[attr-defined]  # private
PAYLOAD = orjson.dumps(
    {"login_method": "password", "success": True, "location": "Berlin, DE", "ip_address": "10.1.2.3"}
)


def batch(size: int) -> list[tuple[Any, ...]]:
    start_ms = int(time.time() * 1000)
    return [
        (str(uuid.uuid4()), random.randint(1, 10_000), "login", start_ms + i, PAYLOAD.decode(), 0, i)
        for i in range(size)
    ]


def publish(queue: str, rows: list[tuple[Any, ...]], tasks: int) -> float:
    """CPU ms per task handed over, as Bridge.dispatch hands them."""
    started = time.process_time()
    for _ in range(tasks):
        with denied_join_result():
            store_signals.apply_async(  # type: ignore[call-arg]  # argsrepr: not in the stubs
                args=("bench-messages", rows), kwargs={"batch_id": "bench"}, argsrepr="(bench)", queue=queue
            )
    return (time.process_time() - started) / tasks * 1000


def receive(queue: str, tasks: int, *, ack_emulation: bool) -> float:
    """CPU ms per task received, its body decoded, kept unacknowledged and acknowledged."""
    options = {**app.conf.broker_transport_options, "ack_emulation": ack_emulation}
    received: list[Any] = []

    def on_message(body: Any, message: Any) -> None:
        received.append(body)
        message.ack()

    with (
        app.connection_for_read(transport_options=options) as connection,
        connection.Consumer([Queue(queue, routing_key=queue)], callbacks=[on_message]),
    ):
        started = time.process_time()
        while len(received) < tasks:
            connection.drain_events(timeout=10)
        return (time.process_time() - started) / tasks * 1000


def histogram_per_record(passes: int) -> tuple[float, float]:
    """CPU µs per record: Histogram.observe one by one against BatchHistogram.observe_many."""
    ages = [random.random() * 2 for _ in range(500)]
    buckets = END_TO_END_LATENCY.bounds[:-1]
    # Scratch copies, on no registry the process exports.
    name = "bench_messages_latency_seconds"
    one_by_one = Histogram(name, "-", buckets=buckets, registry=CollectorRegistry())
    batched = BatchHistogram(name, "-", buckets, registry=None)
    singly, together = [], []
    for _ in range(passes):
        started = time.process_time()
        for _ in range(100):
            for age in ages:
                one_by_one.observe(max(0.0, age))
        singly.append((time.process_time() - started) / (100 * len(ages)) * 1e6)
        started = time.process_time()
        for _ in range(100):
            batched.observe_many([max(0.0, age) for age in ages])
        together.append((time.process_time() - started) / (100 * len(ages)) * 1e6)
    return statistics.median(singly), statistics.median(together)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=100, help="tasks per round and way")
    parser.add_argument("--batch-size", type=int, default=settings.BATCH_SIZE)
    args = parser.parse_args()

    queue = f"bench-messages-{uuid.uuid4().hex[:8]}"
    rows = batch(args.batch_size)
    ways: dict[str, tuple[Callable[..., Any], bool]] = {
        "a client per message (kombu)": (KEPT.uncached, True),
        "one client per channel": (KEPT, True),
        "one client per channel, no ack emulation": (KEPT, False),
    }
    figures: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in ways}
    try:
        # A first round not counted: connections, pools and imports are made in it.
        for round_number in range(args.rounds + 1):
            for name, (create_client, ack_emulation) in ways.items():
                kombu_redis.Channel._create_client = create_client  # type: ignore[attr-defined]
                publish_ms = publish(queue, rows, args.tasks)
                receive_ms = receive(queue, args.tasks, ack_emulation=ack_emulation)
                if round_number:
                    figures[name][0].append(publish_ms)
                    figures[name][1].append(receive_ms)
    finally:
        kombu_redis.Channel._create_client = KEPT  # type: ignore[attr-defined]
        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete(queue)
    print(f"{args.rounds} rounds of {args.tasks} tasks of {args.batch_size} events each way, CPU ms per task, medians")
    for name, (published, received) in figures.items():
        publish_ms, receive_ms = statistics.median(published), statistics.median(received)
        print(f"  {name}: publish {publish_ms:.2f}, receive and acknowledge {receive_ms:.2f}")
    singly, together = histogram_per_record(7)
    print(f"end-to-end histogram, CPU µs per record: Histogram {singly:.2f}, BatchHistogram {together:.2f}")


if __name__ == "__main__":
    main()
