"""`make bench`: sustained events/s from Kafka, stored and analysed, against the machine's limit.

Each run:
1. puts N synthetic signals on a fresh topic (a backlog, so the pipeline is never idle);
2. starts the real worker (store and detect queues) and bridge processes and times from
   the first row stored until the bridge has committed every offset, which it does only
   for events both stored and analysed: the pipeline's sustained rate;
3. empties the table and COPYs the same N rows straight into it, in batches of the same
   size: the raw COPY rate of this machine, table and indexes included.
The median of the runs is printed, ending with one line scripts can read:
    events_per_s=N copy_limit_per_s=M ratio=R
Needs KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL and REDIS_URL (make bench starts local ones).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import cast

import django
import psutil
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventpipeline.settings")
django.setup()

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from anomalies_app.selectors import signal_history, signals_exist  # noqa: E402
from anomalies_app.windows import WindowStore  # noqa: E402
from emitter.generator import SignalGenerator, encode  # noqa: E402
from eventpipeline.kafka import producer_config, topics_ensure  # noqa: E402
from signals_app.partitions import day_number, signals_partitions_ensure  # noqa: E402

COPY_SQL = "COPY signals (event_id, user_id, type, timestamp, payload) FROM STDIN"


def produce_backlog(topic: str, events: list[dict[str, object]]) -> None:
    producer = Producer(producer_config())
    for index, event in enumerate(events):
        key, value = encode(event)
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        if index % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise SystemExit("bench: could not put the backlog on Kafka")


def stored_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM signals")
        return int(cursor.fetchone()[0])


def truncate() -> None:
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE signals, anomalies, user_locations")
        cursor.execute("VACUUM ANALYZE signals")


def committed_total(topic: str, group_id: str) -> int:
    """Offsets the bridge has committed on the topic, summed over its partitions."""
    consumer = Consumer({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "group.id": group_id})
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.TOPIC_PARTITIONS)]
        return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    finally:
        consumer.close()


def anomalies_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM anomalies")
        return int(cursor.fetchone()[0])


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as output:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def cpu_seconds_by_component() -> dict[str, float]:
    """CPU time used so far by each part of the pipeline on this machine."""
    totals: dict[str, float] = {}
    for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        name = process.info["name"] or ""
        if "run_bridge" in cmdline:
            component = "bridge"
        elif "celery" in cmdline and "worker" in cmdline:
            # The bench names its queues bench-store-* and bench-detect-*; --one-worker takes both.
            queues = cmdline.partition(" -Q ")[2].split(" ")[0]
            component = "worker" if "," in queues else f"{queues.split('-')[1]} worker"
        elif name.startswith("postgres") or "postgres:" in cmdline:
            component = "postgresql"
        elif "redis-server" in name or "redis-server" in cmdline:
            component = "redis"
        elif "tansu" in name or "tansu" in cmdline:
            component = "kafka"
        else:
            continue
        times = process.info["cpu_times"]
        if times is not None:
            totals[component] = totals.get(component, 0.0) + times.user + times.system
    return totals


def pipeline_rate(events: list[dict[str, object]], args: argparse.Namespace, logs: Path) -> float:
    """Events/s from Kafka, stored and analysed, with the real processes: from the first
    row stored to the last offset committed."""
    suffix = uuid.uuid4().hex[:8]
    topic = f"bench-signals-{suffix}"
    topics_ensure([topic, f"bench-dlq-{suffix}", f"bench-anomalies-{suffix}"], partitions=settings.TOPIC_PARTITIONS)
    produce_backlog(topic, events)
    truncate()
    env = {
        **os.environ,
        "SIGNALS_TOPIC": topic,
        "DLQ_TOPIC": f"bench-dlq-{suffix}",
        "ANOMALIES_TOPIC": f"bench-anomalies-{suffix}",
        "STORE_QUEUE": f"bench-store-{suffix}",
        "DETECT_QUEUE": f"bench-detect-{suffix}",
        "DETECT_KEY_PREFIX": f"bench-detection-windows-{suffix}",
        "BRIDGE_GROUP_ID": f"bench-{suffix}",
        "BATCH_SIZE": str(args.batch_size),
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "BRIDGE_METRICS_PORT": "0",
        "WORKER_METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
        # As deployed: with DEBUG on, Django also logs every query in each process.
        "DEBUG": "false",
        "SECRET_KEY": os.environ.get("SECRET_KEY") or f"bench-only-{uuid.uuid4().hex}{uuid.uuid4().hex}",
    }
    # One worker process per queue, as docker-compose.yml runs them: each has a GIL of its
    # own, and storing and detecting scale separately (--one-worker: both in one process).
    queue_sets = (
        [f"{env['STORE_QUEUE']},{env['DETECT_QUEUE']}"]
        if args.one_worker
        else [
            env["STORE_QUEUE"],
            env["DETECT_QUEUE"],
        ]
    )
    workers = []
    for queues in queue_sets:
        worker_command = [sys.executable, "-m", "celery", "-A", "eventpipeline", "worker", "-Q", queues]
        worker_command += ["-n", f"{queues.split('-')[1]}-{suffix}@%h", "--without-gossip", "--without-mingle"]
        worker_command += ["--loglevel", "WARNING", *args.worker_args.split()]
        workers.append(start(worker_command, env, logs / "worker.log"))
    # The windows begin as on a fresh deployment: before any event is stored, so none
    # needs filling in from PostgreSQL (that happens once per user after a Redis loss).
    WindowStore(
        redis.Redis.from_url(settings.DETECT_REDIS_URL),
        prefix=env["DETECT_KEY_PREFIX"],
        load_history=signal_history,
        history_exists=signals_exist,
    ).epochs()
    bridge = start([sys.executable, "manage.py", "run_bridge"], env, logs / "bridge.log")
    try:
        cpu_before = cpu_seconds_by_component()
        first_at = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            count = stored_count()
            now = time.monotonic()
            if count and first_at is None:
                first_at, first_count = now, count
            if count >= len(events) and committed_total(topic, env["BRIDGE_GROUP_ID"]) >= len(events):
                now = time.monotonic()
                assert first_at is not None
                cpu_after = cpu_seconds_by_component()
                used = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
                print(
                    "  CPU ms per 1,000 events: "
                    + ", ".join(f"{name} {1e6 * seconds / len(events):.0f}" for name, seconds in sorted(used.items())),
                    flush=True,
                )
                print(f"  anomalies raised: {anomalies_count():,}", flush=True)
                return (count - first_count) / (now - first_at)
            time.sleep(0.2)
        raise SystemExit(f"bench: only {stored_count()} of {len(events)} stored and analysed after 600 s; see {logs}")
    finally:
        stop(bridge)
        for worker in workers:
            stop(worker)
        windows_forget(env["DETECT_KEY_PREFIX"])


def windows_forget(prefix: str) -> None:
    """Remove the run's windows, places caches and sketches (keys per user and kind, which
    would otherwise stay in Redis for hours and slow every later SCAN of it)."""
    client = redis.Redis.from_url(settings.DETECT_REDIS_URL)
    batch = []
    for key in client.scan_iter(f"{prefix}:*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)


def copy_rate(events: list[dict[str, object]], batch_size: int) -> float:
    """The same rows COPYed straight into the same table, in batches of the same size."""
    rows = [(e["event_id"], e["user_id"], e["type"], e["timestamp"], json.dumps(e["payload"])) for e in events]
    truncate()
    # The partitions of their days, as the store task makes them before its COPY.
    signals_partitions_ensure(days={day_number(cast(int, e["timestamp"])) for e in events})
    started = time.monotonic()
    for offset in range(0, len(rows), batch_size):
        with connection.cursor() as cursor, cursor.copy(COPY_SQL) as copy:
            for row in rows[offset : offset + batch_size]:
                copy.write_row(row)
    return len(rows) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=settings.BATCH_SIZE)
    parser.add_argument("--worker-args", default="", help="extra arguments of the Celery workers")
    parser.add_argument("--one-worker", action="store_true", help="one worker process for both queues")
    args = parser.parse_args()

    call_command("migrate", interactive=False, verbosity=0)
    logs = REPO / ".data" / "bench" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pipeline_rates, copy_rates = [], []
    for run in range(1, args.runs + 1):
        # Each run its own events, spread over the last two hours (all valid timestamps).
        start_ms = int(time.time() * 1000) - 7_200_000
        generator = SignalGenerator(seed=run, users=10_000, start_ms=start_ms, rate=args.events / 3600)
        events = [generator.next() for _ in range(args.events)]
        pipeline_rates.append(pipeline_rate(events, args, logs))
        copy_rates.append(copy_rate(events, args.batch_size))
        print(
            f"run {run}: pipeline {pipeline_rates[-1]:,.0f} events/s, COPY {copy_rates[-1]:,.0f} rows/s, "
            f"ratio {pipeline_rates[-1] / copy_rates[-1]:.2f}",
            flush=True,
        )
    truncate()
    events_per_s = statistics.median(pipeline_rates)
    copy_limit = statistics.median(copy_rates)
    print(
        f"median of {args.runs} runs, {args.events:,} events each, batch {args.batch_size}, "
        f"{'one worker' if args.one_worker else 'a store and a detect worker'} {args.worker_args}"
    )
    print(f"events_per_s={events_per_s:.0f} copy_limit_per_s={copy_limit:.0f} ratio={events_per_s / copy_limit:.2f}")


if __name__ == "__main__":
    main()
