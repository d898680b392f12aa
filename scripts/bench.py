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

Each run also prints the CPU each component used per 1,000 events, over the same span as
the rate: from the first row stored, after every process has started up. It counts only the
processes the bench started and what runs under them, found by process id: the bridge and
worker processes of the run, and the servers scripts/devservices.py started for the bench
(DEVSERVICES_PIDS). Other processes on the machine, another pipeline's worker included,
are not counted and cannot disturb the count; a server given by URL is not counted either
(it may serve others), and the bench says so once. After it, the CPU the COPY of step 3
cost per 1,000 rows: the bench's own process (the COPY's client) and the same servers
(docs/performance.md, "The floor at batch 500").

Then a latency run (docs/performance.md, "End-to-end latency"): a steady 5,000 events/s
for 60 s (--latency-rate, --latency-seconds; 0 s: none) into Kafka while the bench's
bridge and workers run with the default settings. Each event's latency runs from its
producer timestamp to the first time the group's committed offset was seen to cover it,
read every 50 ms: the bridge commits only what is stored and analysed. It ends with a
second line scripts can read, the exact percentiles of every event's latency and the
largest resident memory sampled of the bridge and of the largest worker, each with the
processes under it:
    e2e_p50_ms=N e2e_p95_ms=N e2e_p99_ms=N bridge_rss_mb=N worker_rss_mb=N
--runs 0 makes the latency run alone.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, cast

import django
import psutil
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))  # chaos.py's malformed records
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventpipeline.settings")
django.setup()

from celery.utils.nodenames import host_format  # noqa: E402
from chaos import malformed_record  # noqa: E402
from confluent_kafka import (  # noqa: E402
    TIMESTAMP_CREATE_TIME,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka.admin import AdminClient  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from anomalies_app.selectors import signal_history, signals_exist  # noqa: E402
from anomalies_app.windows import WindowStore  # noqa: E402
from emitter.generator import SignalGenerator, encode  # noqa: E402
from emitter.pacing import Pace  # noqa: E402
from eventpipeline.celery import workers_ping  # noqa: E402
from eventpipeline.kafka import committed_offsets, producer_config, topics_ensure  # noqa: E402
from signals_app.partitions import day_number, signals_partitions_ensure  # noqa: E402

COPY_SQL = "COPY signals (event_id, user_id, type, timestamp, payload) FROM STDIN"


def produce(producer: Producer, topic: str, key: bytes, value: bytes) -> None:
    """Puts one record in the producer's queue; while the queue is full, serves delivery
    reports until there is room."""
    while True:
        try:
            producer.produce(topic, key=key, value=value)
            return
        except BufferError:
            producer.poll(0.05)


def produce_backlog(topic: str, events: list[dict[str, object]], malformed_every: int = 0) -> int:
    """Put the events on the topic; with `malformed_every`, a record the bridge must refuse
    after every that many events, of the kinds `make chaos` sends. Returns how many records
    that makes in all."""
    producer = Producer(producer_config())
    rng = random.Random(len(events))
    now_ms = int(time.time() * 1000)
    records = 0
    for index, event in enumerate(events, start=1):
        key, value = encode(event)
        produce(producer, topic, key, value)
        records += 1
        if malformed_every and index % malformed_every == 0:
            produce(producer, topic, key, malformed_record(rng, now_ms))
            records += 1
        if index % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise SystemExit("bench: could not put the backlog on Kafka")
    return records


def stored_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM signals")
        return int(cursor.fetchone()[0])


def any_stored() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT FROM signals)")
        return bool(cursor.fetchone()[0])


def kafka_admin() -> AdminClient:
    """An admin client on the bench's Kafka, to read the group's offsets without joining it."""
    return AdminClient({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "log_level": 0})


def committed_sum(admin: AdminClient, group_id: str, topic: str, partitions: list[int]) -> int:
    """Offsets the group has committed on the topic, summed; 0 while a reading fails."""
    try:
        committed = committed_offsets(admin, group_id, topic, partitions)
    except (KafkaException, TimeoutError):
        return 0
    return sum(offset or 0 for offset in committed.values())


def truncate() -> None:
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE signals, anomalies, user_locations")
        cursor.execute("VACUUM ANALYZE signals")


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


def cpu_line(used: dict[str, float | None], events: int, what: str = "events") -> str:
    """`  CPU ms per 1,000 events: bridge 13, detect worker 25, ...`, by component name."""
    parts = [
        f"{name} not measured" if seconds is None else f"{name} {1e6 * seconds / events:.0f}"
        for name, seconds in sorted(used.items())
    ]
    return f"  CPU ms per 1,000 {what}: " + ", ".join(parts)


def bench_env(args: argparse.Namespace) -> dict[str, str]:
    """The settings of one run's processes: topics, queues, group and Redis keys of the
    run's own (made here), everything else as deployed."""
    suffix = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "SIGNALS_TOPIC": f"bench-signals-{suffix}",
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
    topics_ensure(
        [env["SIGNALS_TOPIC"], env["DLQ_TOPIC"], env["ANOMALIES_TOPIC"]], partitions=settings.TOPIC_PARTITIONS
    )
    return env


@contextlib.contextmanager
def pipeline_running(
    env: dict[str, str], args: argparse.Namespace, logs: Path, servers: dict[str, psutil.Process | None]
) -> Iterator[dict[str, psutil.Process | None]]:
    """The real worker processes and bridge of `env`, running; yields the roots to count,
    {component: process}: `servers` and the processes started here. Stops them and
    forgets the run's windows on the way out."""
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
    started: list[subprocess.Popen[bytes]] = []
    names: list[str] = []
    roots: dict[str, psutil.Process | None] = dict(servers)
    try:
        for queues in queue_sets:
            kind = queues.split("-")[1]
            worker_command = [sys.executable, "-m", "celery", "-A", "eventpipeline", "worker", "-Q", queues]
            name = f"{kind}-{env['BRIDGE_GROUP_ID']}@%h"
            worker_command += ["-n", name, "--without-gossip", "--without-mingle"]
            worker_command += ["--loglevel", "WARNING", *args.worker_args.split()]
            started.append(start(worker_command, env, logs / "worker.log"))
            names.append(host_format(name))  # as the worker expands it
            # Its process id stays its own until stop() reaps it.
            roots["worker" if args.one_worker else f"{kind} worker"] = psutil.Process(started[-1].pid)
        # The bridge hands batches over once every worker takes them: no start-up of a
        # worker runs while the pipeline is measured.
        workers_ready(names, list(started), logs)
        # The windows begin as on a fresh deployment: before any event is stored, so none
        # needs filling in from PostgreSQL (that happens once per user after a Redis loss).
        WindowStore(
            redis.Redis.from_url(settings.DETECT_REDIS_URL),
            prefix=env["DETECT_KEY_PREFIX"],
            load_history=signal_history,
            history_exists=signals_exist,
        ).epochs()
        started.insert(0, start([sys.executable, "manage.py", "run_bridge"], env, logs / "bridge.log"))
        roots["bridge"] = psutil.Process(started[0].pid)
        yield roots
    finally:
        # The bridge first, so that it stops handing batches to workers that are stopping.
        for process in started:
            stop(process)
        windows_forget(env["DETECT_KEY_PREFIX"])


def workers_ready(names: list[str], workers: list[subprocess.Popen[bytes]], logs: Path, timeout: float = 120) -> None:
    """Waits until every worker named answers a ping: started up and consuming its queues
    (Celery starts a worker's remote control after its task consumer). Each ping is
    bounded, so a broker that does not answer ends the wait at `timeout` too."""
    waiting = set(names)
    deadline = time.monotonic() + timeout
    while waiting:
        if any(worker.poll() is not None for worker in workers):
            raise SystemExit(f"bench: a worker exited while starting; see {logs / 'worker.log'}")
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {', '.join(sorted(waiting))} not answering after {timeout:.0f} s; see {logs}")
        try:
            waiting -= set(workers_ping(timeout=0.5, destination=sorted(waiting)))
        except Exception as error:  # noqa: BLE001 - the broker may not answer yet; the deadline ends the wait
            print(f"bench: cannot ping the workers yet: {error}", flush=True)
            time.sleep(1)


def pipeline_rate(
    events: list[dict[str, object]], args: argparse.Namespace, logs: Path, servers: dict[str, psutil.Process | None]
) -> float:
    """Events/s from Kafka, stored and analysed, with the real processes: from the first
    row stored to the last offset committed. The CPU printed is that of the processes
    started here and of `servers`."""
    env = bench_env(args)
    topic = env["SIGNALS_TOPIC"]
    records = produce_backlog(topic, events, args.malformed_every)
    truncate()
    # What the bench watches must cost next to nothing: a count(*) over the growing
    # table five times a second took a fifth of PostgreSQL's CPU in the run it measured
    # (docs/performance.md, "Issue 14, before and after"). Until the first row, it asks
    # whether there is one, and counts the few there are; then it reads the group's
    # committed offsets, which the bridge moves only past events stored and analysed.
    admin = kafka_admin()
    partitions = list(range(settings.TOPIC_PARTITIONS))
    with pipeline_running(env, args, logs, servers) as roots:
        cpu_before: dict[str, float | None] = {}
        first_at = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if first_at is None:
                if any_stored():
                    # The CPU is counted from here, as the rate: the bridge's start-up and
                    # its joining the group are not the pipeline's cost per event.
                    cpu_before = cpu_seconds_by_component(roots)
                    first_count = stored_count()  # a few batches: cheap
                    first_at = time.monotonic()
            elif committed_sum(admin, env["BRIDGE_GROUP_ID"], topic, partitions) >= records:
                now = time.monotonic()
                cpu_after = cpu_seconds_by_component(roots)
                count = stored_count()
                if count < len(events):
                    raise SystemExit(f"bench: offsets committed past {count} of {len(events)} events stored")
                if count - first_count < len(events) / 2:
                    raise SystemExit(
                        f"bench: {first_count:,} of the {len(events):,} events were stored before the first "
                        "reading, too many to time the rest: give more --events"
                    )
                print(cpu_line(cpu_used(cpu_before, cpu_after), count - first_count), flush=True)
                print(f"  anomalies raised: {anomalies_count():,}", flush=True)
                return (count - first_count) / (now - first_at)
            time.sleep(0.2)
        raise SystemExit(f"bench: only {stored_count()} of {len(events)} stored and analysed after 600 s; see {logs}")


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


def copy_rate(events: list[dict[str, object]], batch_size: int, servers: dict[str, psutil.Process | None]) -> float:
    """The same rows COPYed straight into the same table, in batches of the same size.
    Prints the CPU it cost: this process (the COPY's client) and `servers`, PostgreSQL's
    share being the floor of what storing the rows costs it in the pipeline."""
    rows = [(e["event_id"], e["user_id"], e["type"], e["timestamp"], json.dumps(e["payload"])) for e in events]
    truncate()
    # The partitions of their days, as the store task makes them before its COPY.
    signals_partitions_ensure(days={day_number(cast(int, e["timestamp"])) for e in events})
    roots = {**servers, "bench": psutil.Process()}
    cpu_before = cpu_seconds_by_component(roots)
    started = time.monotonic()
    for offset in range(0, len(rows), batch_size):
        with connection.cursor() as cursor, cursor.copy(COPY_SQL) as copy:
            for row in rows[offset : offset + batch_size]:
                copy.write_row(row)
    rate = len(rows) / (time.monotonic() - started)
    print(cpu_line(cpu_used(cpu_before, cpu_seconds_by_component(roots)), len(rows), what="rows COPYed"), flush=True)
    return rate


# --- Latency mode (docs/performance.md, "End-to-end latency") -------------------------

# How often the group's committed offsets are read: a latency is late by about this much
# at most (CommitWatch measures the bound of each run).
COMMIT_READ_INTERVAL_S = 0.05
RSS_SAMPLE_INTERVAL_S = 0.25
# The line scripts read after a latency run.
LATENCY_LINE = re.compile(
    r"^e2e_p50_ms=(?P<p50>\d+) e2e_p95_ms=(?P<p95>\d+) e2e_p99_ms=(?P<p99>\d+) "
    r"bridge_rss_mb=(?P<bridge_mb>\d+|none) worker_rss_mb=(?P<worker_mb>\d+|none)$"
)


class Produced(NamedTuple):
    """Where Kafka put one record, and the producer's timestamp of it (ms since the epoch),
    from the producer's delivery report."""

    partition: int
    offset: int
    produced_ms: int


class CommitMarks:
    """When each committed offset of the group was first seen, per partition.

    A committed offset is the next record the group will read: offset C covers every
    record below C. An offset is noted only when it is above the last one noted for its
    partition, so each mark is the first sighting of that much progress; a record's commit
    time is that of the first mark above its offset."""

    def __init__(self) -> None:
        self.offsets: dict[int, list[int]] = {}
        self.seen_ms: dict[int, list[float]] = {}

    def saw(self, committed: Mapping[int, int | None], at_ms: float) -> None:
        """One reading of the group's committed offsets (None: never committed), taken at
        `at_ms` (ms since the epoch)."""
        for partition, offset in committed.items():
            offsets = self.offsets.setdefault(partition, [])
            if offset is None or (offsets and offset <= offsets[-1]):
                continue
            offsets.append(offset)
            self.seen_ms.setdefault(partition, []).append(at_ms)

    def committed_at(self, partition: int, offset: int) -> float | None:
        """When the record at `offset` was first seen committed; None if not yet."""
        offsets = self.offsets.get(partition, [])
        index = bisect.bisect_right(offsets, offset)
        return self.seen_ms[partition][index] if index < len(offsets) else None

    def covers(self, records: Iterable[Produced]) -> bool:
        """Whether every one of `records` has been seen committed."""
        last: dict[int, int] = {}
        for record in records:
            last[record.partition] = max(record.offset, last.get(record.partition, -1))
        return all(self.committed_at(partition, offset) is not None for partition, offset in last.items())


def latencies_ms(records: Iterable[Produced], marks: CommitMarks) -> tuple[list[float], int]:
    """Each record's producer timestamp to the first sighting of its commit, in ms; and how
    many records have not been seen committed (they have no latency yet)."""
    latencies: list[float] = []
    missing = 0
    for record in records:
        committed_ms = marks.committed_at(record.partition, record.offset)
        if committed_ms is None:
            missing += 1
        else:
            latencies.append(committed_ms - record.produced_ms)
    return latencies, missing


def percentile(values: Sequence[float], point: float) -> float:
    """The nearest-rank percentile: the smallest of `values` that at least `point` per
    cent of them do not exceed. Always one of the values, never interpolated."""
    if not values:
        raise ValueError("no values")
    if not 0 < point <= 100:
        raise ValueError(f"a percentile is above 0 and at most 100, got {point}")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(point / 100 * len(ordered)) - 1)]


def latency_line(latencies: Sequence[float], bridge_mb: float | None, worker_mb: float | None) -> str:
    """`e2e_p50_ms=N e2e_p95_ms=N e2e_p99_ms=N bridge_rss_mb=N worker_rss_mb=N`, the line
    scripts read (`none` for a size not measured)."""
    ms = {point: percentile(latencies, point) for point in (50, 95, 99)}
    mb = ["none" if size is None else f"{size:.0f}" for size in (bridge_mb, worker_mb)]
    return (
        f"e2e_p50_ms={ms[50]:.0f} e2e_p95_ms={ms[95]:.0f} e2e_p99_ms={ms[99]:.0f} "
        f"bridge_rss_mb={mb[0]} worker_rss_mb={mb[1]}"
    )


def tree_rss_bytes(root: psutil.Process) -> int | None:
    """Resident memory of `root` and everything running under it, summed; None when `root`
    itself has ended (a descendant that ends while the tree is walked is skipped)."""
    total = 0
    for process in process_tree(root):
        try:
            total += process.memory_info().rss
        except GONE:
            if process is root:
                return None
    return total if root.is_running() else None


class CommitWatch(threading.Thread):
    """Reads the group's committed offsets every `interval` seconds, without joining the
    group, and notes in `marks` when each was first seen.

    A commit first seen in one reading was not in the answer to the reading before, so it
    happened after that reading's request was sent: it is noted late by at most the time
    from that request to this answer. `late_ms` is the longest such time of the run, the
    bound on how late any latency is. A reading that fails is skipped (the next answer
    widens the bound accordingly)."""

    def __init__(self, group_id: str, topic: str, interval: float = COMMIT_READ_INTERVAL_S) -> None:
        super().__init__(name="commit-watch", daemon=True)
        self.group_id, self.topic, self.interval = group_id, topic, interval
        self.admin = kafka_admin()
        self.partitions = list(range(settings.TOPIC_PARTITIONS))
        self.marks = CommitMarks()
        self.stopping = threading.Event()
        self.late_ms = 0.0
        self.failed = 0
        self.asked_at: float | None = None
        self.read()  # where the group stands before the run

    def read(self) -> None:
        asked_at = time.time()
        try:
            committed = committed_offsets(self.admin, self.group_id, self.topic, self.partitions)
        except (KafkaException, TimeoutError):
            self.failed += 1
            return
        answered_at = time.time()
        self.marks.saw(committed, answered_at * 1000)
        if self.asked_at is not None:
            self.late_ms = max(self.late_ms, (answered_at - self.asked_at) * 1000)
        self.asked_at = asked_at

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.read()

    def finish(self) -> None:
        self.stopping.set()
        self.join()


class PeakRss(threading.Thread):
    """The largest resident memory sampled, per component, every `interval` seconds, of
    the process trees given ({component: root}); a root that has ended is no longer
    sampled. Samples miss a peak shorter than the interval."""

    def __init__(self, roots: Mapping[str, psutil.Process | None], interval: float = RSS_SAMPLE_INTERVAL_S) -> None:
        super().__init__(name="peak-rss", daemon=True)
        self.roots = {name: root for name, root in roots.items() if root is not None}
        self.interval = interval
        self.peak_bytes: dict[str, int] = {}
        self.stopping = threading.Event()
        self.sample()

    def sample(self) -> None:
        for name, root in self.roots.items():
            rss = tree_rss_bytes(root)
            if rss is not None:
                self.peak_bytes[name] = max(rss, self.peak_bytes.get(name, 0))

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.sample()

    def finish(self) -> dict[str, float]:
        """Stops sampling, after one last sample; the peaks in MB (10^6 bytes)."""
        self.stopping.set()
        self.join()
        self.sample()
        return {name: size / 1e6 for name, size in self.peak_bytes.items()}


class LatencyResult(NamedTuple):
    latencies_ms: list[float]
    bridge_mb: float | None
    # The largest worker's peak: each worker is a process (a container) of its own to size.
    worker_mb: float | None


def produce_paced(producer: Producer, topic: str, records: list[tuple[bytes, bytes]], rate: float) -> float:
    """Produces `records` at `rate` per second from now, as the emitter paces itself
    (emitter/pacing.py): what is due by each wake-up, so a late wake-up is made up at the
    next. Returns the seconds it took."""
    pace = Pace(start=time.monotonic(), rate=rate, count=len(records))
    sent = 0
    now = pace.start
    while not pace.finished(now, sent):
        for key, value in records[sent : pace.due(now)]:
            produce(producer, topic, key, value)
            sent += 1
        producer.poll(0)
        now = time.monotonic()
        time.sleep(max(0.0, pace.wake_at(now, sent) - now))
        now = time.monotonic()
    return now - pace.start


def latency_run(args: argparse.Namespace, logs: Path, servers: dict[str, psutil.Process | None]) -> LatencyResult:
    """A steady `--latency-rate` events/s for `--latency-seconds` into Kafka while the
    bench's bridge and workers run with the default settings; each event's latency is its
    producer timestamp to the first sighting of the committed offset that covers it (the
    bridge commits only what is stored and analysed). Prints what it saw."""
    count = round(args.latency_rate * args.latency_seconds)
    # The warm-up: a second's worth of events, committed before the clock starts, so that
    # the bridge has joined its group and the workers have their connections and the day's
    # partitions; none of it is measured.
    warm_up = max(int(args.latency_rate), settings.TOPIC_PARTITIONS)
    generator = SignalGenerator(seed=0, users=10_000, start_ms=int(time.time() * 1000), rate=args.latency_rate)
    # Encoded before the clock starts, so that the bench's own work while it runs is the
    # producer's alone.
    records = [encode(generator.next()) for _ in range(warm_up + count)]
    env = bench_env(args)
    topic, group_id = env["SIGNALS_TOPIC"], env["BRIDGE_GROUP_ID"]
    truncate()
    produced: list[Produced] = []
    failed: list[str] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            failed.append(str(error))
            return
        kind, timestamp = message.timestamp()
        if kind != TIMESTAMP_CREATE_TIME:
            failed.append(f"a timestamp of type {kind}, not the producer's")
            return
        partition, offset = message.partition(), message.offset()
        assert partition is not None and offset is not None
        produced.append(Produced(partition, offset, timestamp))

    producer = Producer(producer_config(on_delivery=delivered))
    with pipeline_running(env, args, logs, servers) as roots:
        for key, value in records[:warm_up]:
            produce(producer, topic, key, value)
        if producer.flush(60) != 0 or failed:
            raise SystemExit(f"bench: could not put the warm-up on Kafka: {failed[:1]}")
        deadline = time.monotonic() + 300
        admin = kafka_admin()
        partitions = list(range(settings.TOPIC_PARTITIONS))
        while committed_sum(admin, group_id, topic, partitions) < warm_up:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: the warm-up was not stored and analysed within 300 s; see {logs}")
            time.sleep(0.5)
        produced.clear()

        watch = CommitWatch(group_id, topic)
        peaks = PeakRss({name: root for name, root in roots.items() if name not in servers})
        watch.start()
        peaks.start()
        cpu_before = cpu_seconds_by_component(roots)
        try:
            took = produce_paced(producer, topic, records[warm_up:], args.latency_rate)
            if producer.flush(60) != 0 or failed:
                raise SystemExit(f"bench: {len(failed)} events of the latency run not put on Kafka: {failed[:1]}")
            deadline = time.monotonic() + 300
            while not watch.marks.covers(produced):
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench: the latency run not all stored and analysed after 300 s; see {logs}")
                time.sleep(0.2)
            cpu_after = cpu_seconds_by_component(roots)
        finally:
            watch.finish()
            peak_mb = peaks.finish()

    latencies, missing = latencies_ms(produced, watch.marks)
    assert missing == 0 and len(latencies) == count, (missing, len(latencies), count)
    latencies.sort()  # once: each percentile below sorts again, which on sorted values is a single pass
    print(
        f"latency: {count:,} events at {args.latency_rate:,.0f}/s asked, {count / took:,.0f}/s sent, "
        f"batch {args.batch_size}",
        flush=True,
    )
    print(cpu_line(cpu_used(cpu_before, cpu_after), count), flush=True)
    print(
        f"  committed offsets read every {1000 * COMMIT_READ_INTERVAL_S:.0f} ms: each latency is late by at most "
        f"{watch.late_ms:.0f} ms ({watch.failed} readings failed)",
        flush=True,
    )
    print(
        "  latency ms: "
        + ", ".join(f"p{point} {percentile(latencies, point):.0f}" for point in (50, 95, 99))
        + f", max {max(latencies):.0f}"
        + f"; peak RSS MB: {', '.join(f'{name} {mb:.0f}' for name, mb in sorted(peak_mb.items()))}",
        flush=True,
    )
    workers = [mb for name, mb in peak_mb.items() if name.endswith("worker")]
    return LatencyResult(latencies, peak_mb.get("bridge"), max(workers) if workers else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3, help="throughput runs (0: the latency run only)")
    parser.add_argument("--batch-size", type=int, default=settings.BATCH_SIZE)
    parser.add_argument("--worker-args", default="", help="extra arguments of the Celery workers")
    parser.add_argument("--one-worker", action="store_true", help="one worker process for both queues")
    parser.add_argument("--latency-rate", type=float, default=5_000, help="events/s of the latency run")
    parser.add_argument(
        "--latency-seconds", type=float, default=60, help="length of the latency run (0: no latency run)"
    )
    parser.add_argument(
        "--malformed-every",
        type=int,
        default=0,
        metavar="N",
        help="throughput runs: one record the bridge must refuse after every N events, as make chaos sends (0: none)",
    )
    parser.add_argument("--logs", type=Path, default=REPO / ".data" / "bench" / "logs", help="where processes log")
    args = parser.parse_args()
    if args.runs < 0 or args.latency_seconds < 0 or args.latency_rate <= 0 or args.malformed_every < 0:
        parser.error(
            "--runs, --latency-seconds and --malformed-every cannot be negative, and --latency-rate must be positive"
        )
    if args.runs == 0 and args.latency_seconds == 0:
        parser.error("nothing to do: --runs 0 and --latency-seconds 0")

    call_command("migrate", interactive=False, verbosity=0)
    logs = args.logs
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
        copy_rates.append(copy_rate(events, args.batch_size, servers))
        print(
            f"run {run}: pipeline {pipeline_rates[-1]:,.0f} events/s, COPY {copy_rates[-1]:,.0f} rows/s, "
            f"ratio {pipeline_rates[-1] / copy_rates[-1]:.2f}",
            flush=True,
        )
    latency = latency_run(args, logs, servers) if args.latency_seconds > 0 else None
    truncate()
    if args.runs:
        events_per_s = statistics.median(pipeline_rates)
        copy_limit = statistics.median(copy_rates)
        print(
            f"median of {args.runs} runs, {args.events:,} events each, batch {args.batch_size}, "
            f"{'one worker' if args.one_worker else 'a store and a detect worker'} {args.worker_args}"
            + (f", one refused record per {args.malformed_every} events" if args.malformed_every else "")
        )
        print(
            f"events_per_s={events_per_s:.0f} copy_limit_per_s={copy_limit:.0f} ratio={events_per_s / copy_limit:.2f}"
        )
    if latency is not None:
        print(latency_line(latency.latencies_ms, latency.bridge_mb, latency.worker_mb), flush=True)


if __name__ == "__main__":
    main()
