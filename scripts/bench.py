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

Each run also prints the CPU each component used per 1,000 events. It counts only the
processes the bench started and what runs under them, found by process id: the bridge and
worker processes of the run, and the servers scripts/devservices.py started for the bench
(DEVSERVICES_PIDS). Other processes on the machine, another pipeline's worker included,
are not counted and cannot disturb the count; a server given by URL is not counted either
(it may serve others), and the bench says so once.
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


# The servers scripts/devservices.py may start, by the names it gives them in
# DEVSERVICES_PIDS, and the names the bench prints.
SERVER_COMPONENTS = {"postgres": "postgresql", "redis": "redis", "kafka": "kafka"}
GONE = (psutil.NoSuchProcess, psutil.AccessDenied)  # ZombieProcess is a NoSuchProcess


def started_servers(variable: str) -> dict[str, int]:
    """{component: pid} of the servers scripts/devservices.py started, from its
    DEVSERVICES_PIDS (`postgres=123,redis=456,kafka=789`); names it does not start are left out."""
    servers: dict[str, int] = {}
    for item in variable.split(","):
        name, _, pid = item.strip().partition("=")
        if name in SERVER_COMPONENTS and pid.isdigit():
            servers[SERVER_COMPONENTS[name]] = int(pid)
    return servers


def server_roots(variable: str | None) -> tuple[dict[str, psutil.Process | None], list[str]]:
    """The servers to count, {component: process} (None: listed but gone already), and the
    components not started by the bench, which are not counted."""
    roots: dict[str, psutil.Process | None] = {}
    for component, pid in started_servers(variable or "").items():
        try:
            roots[component] = psutil.Process(pid)
        except GONE:
            roots[component] = None
    not_counted = [component for component in SERVER_COMPONENTS.values() if component not in roots]
    return roots, not_counted


def process_tree(root: psutil.Process) -> list[psutil.Process]:
    """`root` and its live descendants, found by parent process id (not by name)."""
    try:
        return [root, *root.children(recursive=True)]
    except GONE:
        return [root]


def tree_cpu_seconds(root: psutil.Process) -> float | None:
    """CPU seconds (user + system) used so far by `root` and everything it started: each
    process's own time and its `children_*`, the time of the children it has reaped (e.g.
    PostgreSQL backends that ended). A live descendant counts by its own time, a reaped one
    through the process that reaped it, so nothing counts twice. A descendant that ends
    while the tree is walked is skipped; one whose time cannot be read (another user's)
    too. None when `root` itself has ended or its time cannot be read: its count is lost,
    and a number would be a guess."""
    total = 0.0
    for process in process_tree(root):
        try:
            times = process.cpu_times()
        except GONE:
            if process is root:
                return None
            continue
        total += times.user + times.system + times.children_user + times.children_system
    # Read first, then confirmed: a root that ended before the read fails here even if its
    # process id has been given to another process since (psutil compares start times).
    return total if root.is_running() else None


def cpu_seconds_by_component(roots: dict[str, psutil.Process | None]) -> dict[str, float | None]:
    """CPU seconds used so far by each component, the processes under its root included;
    None for one that cannot be measured (see tree_cpu_seconds)."""
    return {name: None if root is None else tree_cpu_seconds(root) for name, root in roots.items()}


def cpu_used(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float | None]:
    """CPU seconds each component used between two samples; None where it was not measured
    in both, or where the count went down (a root that ended, or a descendant that ended
    outside its tree took its time with it): never a negative number."""
    used: dict[str, float | None] = {}
    for name in sorted(before.keys() | after.keys()):
        first, last = before.get(name), after.get(name)
        used[name] = None if first is None or last is None or last < first else last - first
    return used


def cpu_line(used: dict[str, float | None], events: int) -> str:
    """`  CPU ms per 1,000 events: bridge 13, detect worker 25, ...`, by component name."""
    parts = [
        f"{name} not measured" if seconds is None else f"{name} {1e6 * seconds / events:.0f}"
        for name, seconds in sorted(used.items())
    ]
    return "  CPU ms per 1,000 events: " + ", ".join(parts)


def pipeline_rate(
    events: list[dict[str, object]], args: argparse.Namespace, logs: Path, servers: dict[str, psutil.Process | None]
) -> float:
    """Events/s from Kafka, stored and analysed, with the real processes: from the first
    row stored to the last offset committed. The CPU printed is that of the processes
    started here and of `servers`."""
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
    roots: dict[str, psutil.Process | None] = dict(servers)
    for queues in queue_sets:
        kind = queues.split("-")[1]
        worker_command = [sys.executable, "-m", "celery", "-A", "eventpipeline", "worker", "-Q", queues]
        worker_command += ["-n", f"{kind}-{suffix}@%h", "--without-gossip", "--without-mingle"]
        worker_command += ["--loglevel", "WARNING", *args.worker_args.split()]
        workers.append(start(worker_command, env, logs / "worker.log"))
        # Its process id stays its own until stop() reaps it.
        roots["worker" if args.one_worker else f"{kind} worker"] = psutil.Process(workers[-1].pid)
    # The windows begin as on a fresh deployment: before any event is stored, so none
    # needs filling in from PostgreSQL (that happens once per user after a Redis loss).
    WindowStore(
        redis.Redis.from_url(settings.DETECT_REDIS_URL),
        prefix=env["DETECT_KEY_PREFIX"],
        load_history=signal_history,
        history_exists=signals_exist,
    ).epochs()
    bridge = start([sys.executable, "manage.py", "run_bridge"], env, logs / "bridge.log")
    roots["bridge"] = psutil.Process(bridge.pid)
    try:
        cpu_before = cpu_seconds_by_component(roots)
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
                cpu_after = cpu_seconds_by_component(roots)
                print(cpu_line(cpu_used(cpu_before, cpu_after), len(events)), flush=True)
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
    servers, not_counted = server_roots(os.environ.get("DEVSERVICES_PIDS"))
    if not_counted:
        print(f"{', '.join(not_counted)} not started by the bench: not counted in its CPU", flush=True)
    pipeline_rates, copy_rates = [], []
    for run in range(1, args.runs + 1):
        # Each run its own events, spread over the last two hours (all valid timestamps).
        start_ms = int(time.time() * 1000) - 7_200_000
        generator = SignalGenerator(seed=run, users=10_000, start_ms=start_ms, rate=args.events / 3600)
        events = [generator.next() for _ in range(args.events)]
        pipeline_rates.append(pipeline_rate(events, args, logs, servers))
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
