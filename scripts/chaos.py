"""`make chaos`: a seeded fault run anyone can repeat (docs/testing.md, "The chaos run").

    python scripts/chaos.py [--seed 1] [--faults 20] [--events 200000] [--rate 5000]
    python scripts/chaos.py --scenario crash-loop

It starts servers of its own (Tansu, PostgreSQL behind a TCP proxy it can cut, Redis; the
binaries and start-up of scripts/devservices.py, data in --data-dir), then the pipeline's
processes as deployed, with the defaults users get: two `manage.py run_bridge` (dynamic
group members, --membership, since Tansu 0.6's static membership stalls a group of
several), a store worker and a detect worker (`celery -A eventpipeline
worker`), under a small supervisor that starts again whatever exits, 1 s later, as
systemd or Kubernetes would. `manage.py emit_signals` sends a steady load at --rate, and
this script mixes malformed records in (one per 100 events). While the load runs, faults
come one after another at moments drawn from a random generator seeded with --seed, so
the same seed gives the same faults in the same order:

    kill -9 of a bridge, of the store worker, of the detect worker;
    SIGTERM of a bridge; SIGTERM of a bridge, then again while its successor joins;
    SIGSTOP of a bridge for longer than max.poll.interval.ms, then SIGCONT;
    Redis killed and started again, empty;
    PostgreSQL fast-stopped and started again; PostgreSQL unreachable for 60 s (the proxy
    stops passing bytes, as a network partition does; new connections hang too).

After each fault it waits until the pipeline consumes again: on every partition with
records waiting, a batch read after the fault ended is committed, which the bridge does
only once its batch is stored and analysed, so the whole chain works again. That time
is the fault's recovery. It also says when the pipeline caught up: every record that
was on the topic when the fault ended committed. (For SIGSTOP the clock starts at the
stop: the other bridge must take over the hung one's partitions.) The load goes on
until every fault is over and at least --events events were sent; then the script waits
for every offset to be committed, and compares PostgreSQL with what was sent. Last line:

    chaos: sent=N stored=M lost=L dup=D dead_letters=X/Y faults=K max_recovery_s=R

Exit status 1 if anything was lost or duplicated, a dead letter is missing, or a
recovery took longer than --max-recovery (or never came). `--scenario crash-loop` replays
issue 13's crash loop instead: one bridge, kill -9 at +33 s, then within 30 s six more
hits on the restarted bridge (kill -9 twice, SIGTERM four times, some while it joins),
which must consume again within 15 s of its last restart.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import devservices  # noqa: E402

USERS = 10_000
# One malformed record per this many events: dead letters mixed into the load.
MALFORMED_EVERY = 100
RESTART_DELAY_S = 1.0
# librdkafka's default, should the bridge's consumer not set max.poll.interval.ms.
LIBRDKAFKA_MAX_POLL_INTERVAL_MS = 300_000
STOP_PAST_POLL_INTERVAL_S = 5.0
CRASH_LOOP_LIMIT_S = 15.0
# How long to wait for a fault's recovery at least, and for a stalled drain to move again.
RECOVERY_WAIT_S = 120.0
DRAIN_STALL_S = 60.0
# What the bridge logs just before it joins its group, and once it has partitions.
JOINING = "-> Celery (batch"
ASSIGNED = "assigned ["
# The line the supervisor writes into a process's log as it starts it.
RESTARTED = "=== chaos: starting "
# The bridge's line for a commit it made.
COMMITTED = "bridge.consumer: committed "
# The bridge's line for partitions the group took while it was away.
LOST = "bridge.consumer: lost "
# How a refused commit shows in a bridge's log (its own line, or librdkafka's error code).
COMMIT_REFUSED = ("commit failed", "UNKNOWN_MEMBER", "ILLEGAL_GENERATION", "FENCED")
LAST_LINE = re.compile(
    r"^chaos: sent=(?P<sent>\d+) stored=(?P<stored>\d+) lost=(?P<lost>\d+) dup=(?P<dup>\d+) "
    r"dead_letters=(?P<kept>\d+)/(?P<expected>\d+) faults=(?P<faults>\d+) max_recovery_s=(?P<max_recovery>[\d.]+|none)$"
)

# What each kind of fault does, in words for the fault lines.
FAULT_KINDS = {
    "kill-bridge": "kill -9 of {target}",
    "kill-store": "kill -9 of the store worker",
    "kill-detect": "kill -9 of the detect worker",
    "term-bridge": "SIGTERM of {target}",
    "term-bridge-join": "SIGTERM of {target}, then again during its successor's join",
    "stop-bridge": "SIGSTOP of {target} for {seconds:.0f} s, then SIGCONT",
    "redis-restart": "Redis killed and started again, empty",
    "postgres-restart": "PostgreSQL fast-stopped and started again",
    "postgres-partition": "PostgreSQL unreachable for {seconds:.0f} s",
}


# ---------------------------------------------------------------- pure: schedule, records, summary


@dataclass(frozen=True)
class Fault:
    kind: str
    # Seconds after the previous fault has recovered (the first: after the load started).
    gap_s: float
    target: str = ""
    # For a crash loop: each hit's kind and its delay after the restart before it, and
    # whether it lands while the bridge joins.
    hits: tuple[tuple[str, float, bool], ...] = ()


def fault_schedule(rng: random.Random, count: int, bridges: list[str], kinds: list[str]) -> list[Fault]:
    """`count` faults of `kinds`: every kind once while the count allows (in an order the
    seed picks), the rest drawn at random; each a few seconds after the previous one has
    recovered."""
    order = list(kinds)
    rng.shuffle(order)
    chosen = order[:count] + [rng.choice(kinds) for _ in range(count - len(order))]
    faults = []
    for index, kind in enumerate(chosen):
        gap = rng.uniform(10.0, 20.0) if index == 0 else rng.uniform(2.0, 8.0)
        target = rng.choice(bridges) if kind.endswith(("bridge", "bridge-join")) else ""
        faults.append(Fault(kind=kind, gap_s=round(gap, 1), target=target))
    return faults


def crash_loop_schedule(rng: random.Random, bridge: str) -> list[Fault]:
    """Issue 13's crash loop: kill -9 at +33 s, then six hits on the restarted bridge within
    the next 30 s: kill -9 twice and SIGTERM four times, some while it is still joining."""
    kinds = ["kill", "kill", "term", "term", "term", "term"]
    rng.shuffle(kinds)
    during_join = [True, True, True, False, False, False]
    rng.shuffle(during_join)
    # During the join: under a second after it began; otherwise once it has partitions.
    hits = tuple(
        (kind, round(rng.uniform(0.2, 1.0) if joining else rng.uniform(0.5, 3.0), 2), joining)
        for kind, joining in zip(kinds, during_join, strict=True)
    )
    return [Fault(kind="crash-loop", gap_s=33.0, target=bridge, hits=hits)]


def malformed_record(rng: random.Random, now_ms: int) -> bytes:
    """One record of a kind the bridge must refuse, each naming a field or a problem."""
    good = {
        "user_id": rng.randint(1, USERS),
        "type": "click",
        "timestamp": now_ms,
        "payload": {"page": "/", "element": "a"},
    }

    def variant(**changes: object) -> bytes:
        return json.dumps({key: value for key, value in {**good, **changes}.items() if value is not ...}).encode()

    kinds: list[Callable[[], bytes]] = [
        lambda: b"\xff\xfe\x00garbage",
        lambda: b"{this is not json",
        lambda: b"[1, 2, 3]",
        lambda: b"",
        lambda: variant(timestamp=...),
        lambda: variant(user_id="abc"),
        lambda: variant(type="logout"),
        lambda: variant(timestamp=now_ms * 1000),
        lambda: variant(timestamp=now_ms // 1000),
        lambda: variant(payload={"page": "/"}),
        lambda: variant(event_id="not-a-uuid"),
        lambda: variant(payload={"page": "/", "element": "x" * 70_000}),
        lambda: b"[" * 2000 + b"]" * 2000,
    ]
    return rng.choice(kinds)()


def summary_line(
    *,
    sent: int,
    stored: int,
    lost: int,
    dup: int,
    kept: int,
    expected: int,
    faults: int,
    recoveries: list[float | None],
) -> str:
    measured = [seconds for seconds in recoveries if seconds is not None]
    worst = "none" if not measured or len(measured) < len(recoveries) else f"{max(measured):.1f}"
    return (
        f"chaos: sent={sent} stored={stored} lost={lost} dup={dup} dead_letters={kept}/{expected} "
        f"faults={faults} max_recovery_s={worst}"
    )


def caught_up(end: dict[int, int], waiting: set[int], now: dict[int, int]) -> bool:
    """Whether every partition that had records waiting has them all committed: its committed
    offset has reached the log end noted when the fault ended."""
    return all(now.get(partition, 0) >= end[partition] for partition in waiting)


def consuming_again(first_read: dict[int, int], waiting: set[int], now: dict[int, int]) -> bool:
    """Whether every partition that had records waiting has a batch read after the fault
    committed: its committed offset is past the first record the bridges read after it."""
    return all(partition in first_read and now.get(partition, 0) > first_read[partition] for partition in waiting)


BATCH_RANGE = re.compile(r"\[(\d+)\]@(\d+)-(\d+)")


def first_reads(log: str) -> dict[int, int]:
    """Per partition, the first record of the first batch a bridge's log shows it read (its
    lines "batch <id>: ... from <topic> [p]@first-last ...")."""
    firsts: dict[int, int] = {}
    for line in log.splitlines():
        if " bridge.consumer: batch " not in line:
            continue
        for partition, first, _last in BATCH_RANGE.findall(line):
            firsts.setdefault(int(partition), int(first))
    return firsts


def say(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------- PostgreSQL behind a proxy we can cut


class PartitionableProxy:
    """A TCP proxy in front of PostgreSQL. `partition()` stops every byte both ways, on the
    connections open and on new ones (they are accepted, then hang, as packets that vanish
    leave them); `heal()` lets them flow again. The pipeline's processes see a network
    partition: no error, no answer, until their own timeouts decide."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.healed = threading.Event()
        self.healed.set()
        self.closed = False
        threading.Thread(target=self.accept_loop, name="pg-proxy", daemon=True).start()

    def partition(self) -> None:
        self.healed.clear()

    def heal(self) -> None:
        self.healed.set()

    def close(self) -> None:
        self.closed = True
        self.healed.set()
        self.listener.close()

    def accept_loop(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.connect, args=(client,), daemon=True).start()

    def connect(self, client: socket.socket) -> None:
        self.healed.wait()
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
        except OSError:
            client.close()  # PostgreSQL is down: the client sees its connection closed
            return
        upstream.settimeout(None)
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self.pump, args=(source, sink), daemon=True).start()

    def pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self.closed:
                self.healed.wait()
                readable, _, _ = select.select([source], [], [], 0.2)
                if not readable or not self.healed.is_set():
                    continue
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except (OSError, ValueError):  # ValueError: select on a socket closed meanwhile
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()


# ---------------------------------------------------------------- the supervisor


@dataclass
class Supervised:
    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    log_offset: int = 0
    restart_due: float | None = None
    exits: list[tuple[float, int]] = field(default_factory=list)


class Supervisor:
    """Starts each process again RESTART_DELAY_S after it exits, whatever the reason, as
    systemd's Restart=always or a Kubernetes pod would."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.processes: dict[str, Supervised] = {}
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self.loop, name="supervisor", daemon=True)

    def add(self, name: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        supervised = Supervised(name, command, env, log_path)
        self.processes[name] = supervised
        self.spawn(supervised)

    def spawn(self, supervised: Supervised) -> None:
        with open(supervised.log_path, "ab") as log:
            header = f"{RESTARTED}{supervised.name} at +{self.elapsed():.1f} s ({time.strftime('%H:%M:%S')})"
            log.write(f"{header}\n".encode())
            supervised.log_offset = log.tell()
            supervised.process = subprocess.Popen(
                supervised.command,
                cwd=REPO,
                env=supervised.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        supervised.started_at = time.monotonic()
        supervised.restart_due = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def loop(self) -> None:
        while self.running:
            with self.lock:
                for supervised in self.processes.values():
                    self.tend(supervised)
            time.sleep(0.05)

    def tend(self, supervised: Supervised) -> None:
        assert supervised.process is not None
        now = time.monotonic()
        if supervised.restart_due is None:
            returncode = supervised.process.poll()
            if returncode is not None:
                supervised.exits.append((now, returncode))
                supervised.restart_due = now + RESTART_DELAY_S
        elif now >= supervised.restart_due:
            self.spawn(supervised)

    def signal(self, name: str, signum: int) -> int:
        """Signal a process's whole group (a worker's pool children too); return its pid."""
        with self.lock:
            process = self.processes[name].process
            assert process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)
            return process.pid

    def wait_restart(self, name: str, after: float, timeout: float = 60.0) -> float:
        """When `name` was started again after `after` (monotonic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[name].started_at > after:
                return self.processes[name].started_at
            time.sleep(0.02)
        raise RuntimeError(f"{name} was not started again within {timeout:.0f} s")

    def log_since_start(self, name: str) -> str:
        supervised = self.processes[name]
        return devservices.read_log(supervised.log_path, supervised.log_offset)

    def stop_all(self, timeout: float = 45.0) -> None:
        self.running = False
        self.thread.join()
        for supervised in self.processes.values():
            assert supervised.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(supervised.process.pid, signal.SIGCONT)
                os.killpg(supervised.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for supervised in self.processes.values():
            assert supervised.process is not None
            try:
                supervised.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(supervised.process.pid, signal.SIGKILL)
                supervised.process.wait()


# ---------------------------------------------------------------- watching the group's offsets


class OffsetWatch:
    """Polls the bridge group's committed offsets all along: recovery is read from them, and
    any offset that moves back (a bridge committing over the partition's new owner) is kept."""

    def __init__(self, topic: str, group_id: str, partitions: list[int]) -> None:
        from confluent_kafka.admin import AdminClient
        from django.conf import settings

        from eventpipeline.kafka import log_end_probe

        self.topic, self.group_id, self.partitions = topic, group_id, partitions
        self.admin = AdminClient({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "log_level": 0})
        self.probe = log_end_probe()
        self.latest: dict[int, int] = {}
        self.regressions: list[tuple[float, int, int, int]] = []
        self.running = True
        self.fast_until = 0.0
        self.thread = threading.Thread(target=self.loop, name="offsets", daemon=True)
        self.thread.start()

    def committed(self) -> dict[int, int]:
        from eventpipeline.kafka import committed_offsets

        answer = committed_offsets(self.admin, self.group_id, self.topic, self.partitions)
        return {partition: offset or 0 for partition, offset in answer.items()}

    def log_end(self) -> dict[int, int]:
        from eventpipeline.kafka import log_end_offsets

        return {
            partition: end for partition, (_, end) in log_end_offsets(self.probe, self.topic, self.partitions).items()
        }

    def loop(self) -> None:
        while self.running:
            try:
                now = self.committed()
            except Exception:  # noqa: BLE001 - Kafka busy: ask again
                time.sleep(0.5)
                continue
            for partition, offset in now.items():
                before = self.latest.get(partition, 0)
                if offset < before:
                    self.regressions.append((time.monotonic(), partition, before, offset))
            self.latest = now
            if time.monotonic() > self.fast_until:
                time.sleep(0.25)

    def closely(self, seconds: float) -> None:
        """Read without pause for a while: a stale commit is soon covered by the next one."""
        self.fast_until = time.monotonic() + seconds

    def fresh(self) -> dict[int, int]:
        """Committed offsets read after this call began."""
        while True:
            try:
                return self.committed()
            except Exception:  # noqa: BLE001 - Kafka busy: ask again
                time.sleep(0.2)

    def stop(self) -> None:
        self.running = False
        self.thread.join()
        self.probe.close()


# ---------------------------------------------------------------- the run


@dataclass
class Outcome:
    description: str
    # From when recovery is counted.
    since: float
    note: str = ""
    # The bridge hit, if one was: what it reads counts only once it is started again (a
    # SIGTERMed bridge still reads a batch as it stops; a SIGSTOPped one when it wakes).
    bridge: str = ""


class ChaosRun:
    def __init__(self, args: argparse.Namespace, data_dir: Path, stack: contextlib.ExitStack) -> None:
        self.args = args
        self.data_dir = data_dir
        self.rng = random.Random(args.seed)
        self.logs = data_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        for old in self.logs.glob("*.log"):
            old.unlink()
        self.stack = stack
        self.recoveries: list[float | None] = []
        # Faults injected so far, each hit of a crash loop counted.
        self.injected = 0
        self.failures: list[str] = []
        self.loading = threading.Event()
        self.malformed: dict[tuple[int, int], bytes] = {}
        self.malformed_errors: list[str] = []
        self.malformed_sent = 0
        # Said after a fault's line is due (the SIGSTOP's woken bridge, watched after SIGCONT).
        self.after_fault: Callable[[], str] | None = None

    # --- servers and processes ---------------------------------------------------------
    def servers_start(self) -> None:
        say(f"chaos: servers of its own, data in {devservices.shown(self.data_dir)}")
        self.postgres = devservices.start_service(devservices.PostgresService(self.data_dir, fresh=False), self.stack)
        self.redis = devservices.start_service(devservices.RedisService(self.data_dir), self.stack)
        self.kafka = devservices.start_service(devservices.KafkaService(self.data_dir), self.stack)
        self.proxy = PartitionableProxy(self.postgres.port)
        self.stack.callback(self.proxy.close)
        with devservices.psycopg.connect(
            devservices.database_url(self.postgres.port, "postgres"), autocommit=True
        ) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{devservices.DATABASE_NAME}" WITH (FORCE)')
            db.execute(f'CREATE DATABASE "{devservices.DATABASE_NAME}"')
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.url,
            "DATABASE_URL": devservices.database_url(self.proxy.port),
            "REDIS_URL": self.redis.url,
            "SECRET_KEY": devservices.kept_secret(self.data_dir / "secret-key"),
            # As deployed: the defaults users get, DEBUG off.
            "DEBUG": "false",
            "PYTHONUNBUFFERED": "1",
        }
        for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DETECT_REDIS_URL"):
            self.env.pop(name, None)
        os.environ.update({name: self.env[name] for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "SECRET_KEY")})
        os.environ["DATABASE_URL"] = devservices.database_url(self.postgres.port)
        os.environ["DEBUG"] = "false"
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventpipeline.settings")
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            check=False,
        )
        if migrate.returncode != 0:
            raise SystemExit(f"chaos: migrate failed:\n{migrate.stdout.decode()}{migrate.stderr.decode()}")

        import django

        django.setup()

    def processes_start(self) -> None:
        from django.conf import settings

        from eventpipeline.kafka import consumer_config, topics_ensure

        self.topic = settings.SIGNALS_TOPIC
        self.group_id = settings.BRIDGE_GROUP_ID
        topics_ensure([self.topic, settings.DLQ_TOPIC], partitions=settings.TOPIC_PARTITIONS)
        self.partitions = list(range(settings.TOPIC_PARTITIONS))
        poll_ms = consumer_config(self.group_id).get("max.poll.interval.ms", LIBRDKAFKA_MAX_POLL_INTERVAL_MS)
        self.stop_seconds = int(poll_ms) / 1000 + STOP_PAST_POLL_INTERVAL_S
        self.supervisor = Supervisor(started=time.monotonic())
        python = sys.executable
        count = 1 if self.args.scenario == "crash-loop" else 2
        self.membership = self.args.membership or ("static" if count == 1 else "dynamic")
        self.bridges = [f"bridge-{number}" for number in range(1, count + 1)]
        for name in self.bridges:
            env = {
                **self.env,
                "BRIDGE_INSTANCE_ID": name if self.membership == "static" else "",
                "BRIDGE_METRICS_PORT": str(devservices.any_free_port()),
            }
            self.supervisor.add(name, [python, "manage.py", "run_bridge"], env, self.logs / f"{name}.log")
        for queue, extra in (("store", ",default"), ("detect", "")):
            command = [python, "-m", "celery", "-A", "eventpipeline", "worker", "-Q", queue + extra]
            command += ["-n", f"{queue}@%h", "--loglevel", "INFO"]
            env = {**self.env, "WORKER_METRICS_PORT": str(devservices.any_free_port())}
            self.supervisor.add(f"{queue}-worker", command, env, self.logs / f"{queue}-worker.log")
        self.supervisor.thread.start()
        self.stack.callback(self.supervisor.stop_all)
        self.offsets = OffsetWatch(self.topic, self.group_id, self.partitions)
        self.stack.callback(self.offsets.stop)

    def load_start(self) -> None:
        """The emitter at --rate without end (stopped once the faults are over and --events
        are sent), and this script's own malformed records, one per MALFORMED_EVERY events."""
        self.start_ms = int(time.time() * 1000)
        command = [sys.executable, "manage.py", "emit_signals", "--rate", str(self.args.rate), "--seed"]
        command += [str(self.args.seed), "--start-ms", str(self.start_ms), "--users", str(USERS)]
        command += ["--no-follow-control", "--no-progress", "--metrics-port", "0"]
        self.emitter_log = self.logs / "emitter.log"
        with open(self.emitter_log, "wb") as log:
            self.emitter = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.stack.callback(self.emitter_stop)
        self.load_started = time.monotonic()
        self.loading.set()
        self.malformed_thread = threading.Thread(target=self.malformed_send, name="malformed", daemon=True)
        self.malformed_thread.start()

    def malformed_send(self) -> None:
        from confluent_kafka import Producer

        from eventpipeline.kafka import producer_config

        rng = random.Random(self.args.seed + 1)
        producer = Producer(producer_config())
        lock = threading.Lock()

        def delivered(error: Any, message: Any) -> None:
            with lock:
                if error is not None:
                    self.malformed_errors.append(str(error))
                else:
                    self.malformed[(message.partition(), message.offset())] = message.value() or b""

        sent = 0
        while self.loading.is_set():
            due = int((time.monotonic() - self.load_started) * self.args.rate / MALFORMED_EVERY)
            while sent < due:
                producer.produce(
                    self.topic, value=malformed_record(rng, int(time.time() * 1000)), on_delivery=delivered
                )
                sent += 1
            producer.poll(0.05)
        if producer.flush(60) != 0:
            self.malformed_errors.append("not all malformed records were delivered")
        self.malformed_sent = sent

    def emitter_stop(self) -> None:
        """On the way out, whatever happened: the emitter must not outlive the run."""
        self.loading.clear()
        if self.emitter.poll() is None:
            os.killpg(self.emitter.pid, signal.SIGKILL)
            self.emitter.wait()

    def load_stop(self) -> int:
        """Stop the emitter (it flushes and says how many it sent) and the malformed records."""
        self.emitter.send_signal(signal.SIGTERM)
        self.emitter.wait(timeout=120)
        self.loading.clear()
        self.malformed_thread.join()
        output = self.emitter_log.read_text()
        match = re.search(r"emitted (\d+) events", output)
        if self.emitter.returncode != 0 or match is None:
            raise SystemExit(f"chaos: the emitter failed (status {self.emitter.returncode}):\n{output[-2000:]}")
        return int(match.group(1))

    # --- faults --------------------------------------------------------------------------
    def run_faults(self, faults: list[Fault]) -> None:
        limit = CRASH_LOOP_LIMIT_S if self.args.scenario == "crash-loop" else self.args.max_recovery
        for number, fault in enumerate(faults, 1):
            time.sleep(fault.gap_s)
            at = time.monotonic() - self.load_started
            outcome = self.inject(fault)
            self.injected += 1 + len(fault.hits)
            recovered, caught = self.wait_recovered(
                outcome.since, timeout=max(4 * limit, RECOVERY_WAIT_S), hit=outcome.bridge
            )
            self.recoveries.append(recovered)
            verdict = "never within the wait" if recovered is None else f"{recovered:.1f} s"
            backlog = "not within the wait" if caught is None else f"after {caught:.1f} s"
            note = outcome.note
            if self.after_fault is not None:
                note += self.after_fault()
                self.after_fault = None
            over = recovered is None or recovered > limit
            if over:
                self.failures.append(f"fault {number} ({outcome.description}): recovery {verdict}, limit {limit:g} s")
            say(
                f"chaos: fault {number}/{len(faults)} at +{at:.1f} s: {outcome.description}: consuming again "
                f"after {verdict}{' (over the limit)' if over else ''}, caught up {backlog}{note}"
            )
            if recovered is None:
                # Later faults would only measure a pipeline that is down already.
                say(f"chaos: the pipeline did not consume again; no more faults ({len(faults) - number} left out)")
                return

    def inject(self, fault: Fault) -> Outcome:
        seconds = self.stop_seconds if fault.kind == "stop-bridge" else self.args.partition_seconds
        description = FAULT_KINDS.get(fault.kind, "crash loop of {target}").format(target=fault.target, seconds=seconds)
        action: Callable[[Fault, str], Outcome] = getattr(self, "fault_" + fault.kind.replace("-", "_"))
        return action(fault, description)

    def kill(self, name: str, signum: int, description: str) -> Outcome:
        began = time.monotonic()
        pid = self.supervisor.signal(name, signum)
        return Outcome(f"{description} (pid {pid})", began, bridge=name if name in self.bridges else "")

    def fault_kill_bridge(self, fault: Fault, description: str) -> Outcome:
        return self.kill(fault.target, signal.SIGKILL, description)

    def fault_kill_store(self, fault: Fault, description: str) -> Outcome:
        return self.kill("store-worker", signal.SIGKILL, description)

    def fault_kill_detect(self, fault: Fault, description: str) -> Outcome:
        return self.kill("detect-worker", signal.SIGKILL, description)

    def fault_term_bridge(self, fault: Fault, description: str) -> Outcome:
        return self.kill(fault.target, signal.SIGTERM, description)

    def fault_term_bridge_join(self, fault: Fault, description: str) -> Outcome:
        first = self.kill(fault.target, signal.SIGTERM, description)
        joining = self.hit_after_restart(fault.target, "term", self.rng.uniform(0.2, 1.0), first.since, joining=True)
        return Outcome(first.description, joining[0], f"; second SIGTERM {joining[1]}", bridge=fault.target)

    def hit_after_restart(
        self, name: str, kind: str, delay: float, after: float, *, joining: bool
    ) -> tuple[float, str]:
        """Wait for the supervisor to start bridge `name` again, then hit it `delay` s after it
        began to join its group (its line "bridge: ... -> Celery" comes just before), or after
        it was assigned partitions; say which it was when hit."""
        self.supervisor.wait_restart(name, after, timeout=120)
        self.wait_logged(name, JOINING if joining else ASSIGNED)
        time.sleep(delay)
        assigned = ASSIGNED in self.supervisor.log_since_start(name)
        self.supervisor.signal(name, signal.SIGKILL if kind == "kill" else signal.SIGTERM)
        hit = time.monotonic()
        state = "once it had partitions" if assigned else "while it was joining"
        return hit, f"{delay:.1f} s after it {'was assigned' if not joining else 'began to join'}, {state}"

    def wait_logged(self, name: str, text: str, timeout: float = 60.0) -> None:
        """Until the running process `name` has logged `text` (or `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and text not in self.supervisor.log_since_start(name):
            time.sleep(0.01)

    def fault_crash_loop(self, fault: Fault, description: str) -> Outcome:
        first = self.kill(fault.target, signal.SIGKILL, f"kill -9 of {fault.target}")
        say(f"chaos:   crash loop: {first.description}")
        last = first.since
        for kind, delay, joining in fault.hits:
            last, state = self.hit_after_restart(fault.target, kind, delay, last, joining=joining)
            say(f"chaos:   crash loop: {'kill -9' if kind == 'kill' else 'SIGTERM'} {state}")
        restarted = self.supervisor.wait_restart(fault.target, last, timeout=120)
        window = restarted - first.since
        return Outcome(
            f"crash loop of {fault.target}: 7 hits in {window:.1f} s",
            restarted,
            f" (counted from its last restart, +{restarted - self.load_started:.1f} s)",
        )

    def fault_stop_bridge(self, fault: Fault, description: str) -> Outcome:
        """SIGSTOP past max.poll.interval.ms: the other bridge must take the partitions over;
        then SIGCONT, and the woken bridge must not commit over its successor. The stop comes
        just after the bridge handed a batch to Celery, so that the batch is done while it
        sleeps and it has a commit to make the moment it wakes."""
        self.wait_for_line(fault.target, "; to store and detect")
        began = time.monotonic()
        pid = self.supervisor.signal(fault.target, signal.SIGSTOP)
        log_before = self.supervisor.log_since_start(fault.target)
        regressions_before = len(self.offsets.regressions)

        def wake() -> None:
            self.offsets.closely(seconds=10.0)
            self.supervisor.signal(fault.target, signal.SIGCONT)

        timer = threading.Timer(self.stop_seconds, wake)
        timer.start()
        self.after_fault = lambda: self.zombie_report(fault.target, timer, log_before, regressions_before)
        return Outcome(f"{description} (pid {pid})", began, bridge=fault.target)

    def wait_for_line(self, name: str, text: str, timeout: float = 10.0) -> None:
        """Until `name` logs a new line containing `text` (or `timeout`)."""
        seen = self.supervisor.log_since_start(name).count(text)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.supervisor.log_since_start(name).count(text) <= seen:
            time.sleep(0.005)

    def zombie_report(self, name: str, timer: threading.Timer, log_before: str, regressions_before: int) -> str:
        """What the woken bridge did in the 10 s after SIGCONT: the commits it made before it
        learnt that its partitions were gone, and whether any committed offset moved back
        (the group's offsets are read without pause meanwhile)."""
        timer.join()
        time.sleep(10)
        log = self.supervisor.log_since_start(name)
        woken = log[len(log_before) :].splitlines()
        rejoined = next((index for index, line in enumerate(woken) if ASSIGNED in line), len(woken))
        stale = [line for line in woken[:rejoined] if COMMITTED in line]
        refused = [line for line in woken if any(sign in line for sign in COMMIT_REFUSED)]
        told = [line for line in woken[:rejoined] if LOST in line]
        regressions = self.offsets.regressions[regressions_before:]
        if stale:
            # By SIGCONT the other bridge has had the partitions for seconds: a commit before
            # the woken one rejoins is a zombie's, whether or not Kafka takes it.
            self.failures.append(f"{name} committed {len(stale)} times after SIGCONT before it rejoined")
        if regressions:
            moved = ", ".join(f"[{partition}] {before}->{after}" for _, partition, before, after in regressions)
            self.failures.append(f"{name} committed over its successor after SIGCONT: {moved}")
        shown = "".join(f"\n    {line.strip()[:240]}" for line in (stale + refused + told)[:4])
        return (
            f"; woken, before rejoining it committed {len(stale)} times, {len(refused)} commits were refused, "
            f"{'it was told its partitions were lost, ' if told else ''}"
            f"{len(regressions)} committed offsets moved back{shown}"
        )

    def fault_redis_restart(self, fault: Fault, description: str) -> Outcome:
        self.redis.process.kill()
        self.redis.process.wait()
        time.sleep(RESTART_DELAY_S)
        self.redis.restart()
        return Outcome(description, time.monotonic())

    def fault_postgres_restart(self, fault: Fault, description: str) -> Outcome:
        self.postgres.stop()
        time.sleep(RESTART_DELAY_S)
        self.postgres.restart()
        return Outcome(description, time.monotonic())

    def fault_postgres_partition(self, fault: Fault, description: str) -> Outcome:
        self.proxy.partition()
        time.sleep(self.args.partition_seconds)
        self.proxy.heal()
        return Outcome(description, time.monotonic())

    def wait_recovered(self, since: float, timeout: float, hit: str = "") -> tuple[float | None, float | None]:
        """Seconds from `since` until the pipeline consumes again (on every partition with
        records waiting, a batch read after `since` committed), and until it has caught up
        (every record that was on the topic at `since` committed); None if not within
        `timeout`. Batches are read from what the bridges log from now on."""
        logs = {name: self.supervisor.processes[name].log_path for name in self.bridges}
        log_offsets = {name: path.stat().st_size for name, path in logs.items()}
        before = self.offsets.fresh()
        end = self.offsets.log_end()
        waiting = {partition for partition in self.partitions if end.get(partition, 0) > before.get(partition, 0)}
        deadline = since + timeout
        again: float | None = None
        while time.monotonic() < deadline:
            now = self.offsets.fresh()
            if again is None:
                first: dict[int, int] = {}
                for name, path in logs.items():
                    log = devservices.read_log(path, log_offsets[name])
                    if name == hit:
                        log = log.partition(RESTARTED)[2]
                    for partition, offset in first_reads(log).items():
                        first[partition] = min(first.get(partition, offset), offset)
                if consuming_again(first, waiting, now):
                    again = time.monotonic() - since
            if again is not None and caught_up(end, waiting, now):
                return again, time.monotonic() - since
            time.sleep(0.2)
        return again, None

    # --- the end -------------------------------------------------------------------------
    def drain(self, timeout: float) -> bool:
        """Until every offset is committed: False after `timeout`, or once the committed
        offsets have not moved for DRAIN_STALL_S (a group that no longer consumes)."""
        deadline = time.monotonic() + timeout
        end = self.offsets.log_end()
        last, moved = self.offsets.fresh(), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - moved < DRAIN_STALL_S:
            now = self.offsets.fresh()
            if all(now.get(partition, 0) >= end[partition] for partition in self.partitions):
                return True
            if now != last:
                last, moved = now, time.monotonic()
            time.sleep(1.0)
        return False

    def count(self, sent: int) -> tuple[int, int, int, int, int]:
        """Stored rows, lost and duplicated events (by distinct event id against what the
        emitter's seed gives), and dead letters kept of those expected."""
        from emitter.generator import SignalGenerator

        generator = SignalGenerator(seed=self.args.seed, users=USERS, start_ms=self.start_ms, rate=self.args.rate)
        url = devservices.database_url(self.postgres.port)
        with devservices.psycopg.connect(url) as db:
            stored, distinct = db.execute("SELECT count(*), count(DISTINCT event_id) FROM signals").fetchone() or (0, 0)
            db.execute("CREATE TEMP TABLE expected (event_id uuid PRIMARY KEY)")
            with db.cursor().copy("COPY expected (event_id) FROM STDIN") as copy:
                for _ in range(sent):
                    copy.write_row((generator.next()["event_id"],))
            lost_row = db.execute(
                "SELECT count(*) FROM expected e "
                "WHERE NOT EXISTS (SELECT 1 FROM signals s WHERE s.event_id = e.event_id)"
            ).fetchone()
            kept = {
                (partition, offset)
                for partition, offset in db.execute(
                    "SELECT source_partition, source_offset FROM dead_letters WHERE source_topic = %s", (self.topic,)
                )
            }
        lost = int(lost_row[0]) if lost_row else sent
        return int(stored), lost, int(stored) - int(distinct), len(kept & set(self.malformed)), len(kept)

    def run(self) -> int:
        self.servers_start()
        self.processes_start()
        running = ", ".join(self.supervisor.processes)
        say(
            f"chaos: {running} running (bridges as {self.membership} group members); "
            f"faults at moments seeded by --seed {self.args.seed}"
        )
        if self.args.scenario == "crash-loop":
            faults = crash_loop_schedule(self.rng, self.bridges[0])
        else:
            faults = fault_schedule(self.rng, self.args.faults, self.bridges, self.args.kinds)
        self.load_start()
        say(f"chaos: load: emit_signals at {self.args.rate:g}/s, one malformed record per {MALFORMED_EVERY} events")
        self.run_faults(faults)
        while self.sent_so_far() < self.args.events:
            time.sleep(1.0)
        sent = self.load_stop()
        say(f"chaos: load stopped: {sent} events, {self.malformed_sent} malformed records; waiting for the drain")
        if not self.drain(self.args.drain_timeout):
            self.failures.append(
                f"not every offset was committed within {self.args.drain_timeout:g} s of the load's end, "
                f"or they stopped moving for {DRAIN_STALL_S:g} s: what was not stored counts as lost"
            )
        time.sleep(2)  # the last tasks' rows are committed in PostgreSQL before their results
        stored, lost, dup, kept, kept_all = self.count(sent)
        expected = len(self.malformed)
        if self.malformed_errors:
            self.failures.append(f"malformed records not delivered: {self.malformed_errors[:3]}")
        if lost or dup:
            self.failures.append(f"{lost} events lost, {dup} stored twice")
        if kept != expected:
            self.failures.append(f"{expected - kept} of {expected} dead letters missing")
        if kept_all != kept:
            self.failures.append(f"{kept_all - kept} dead letters of records that were not malformed")
        for name, supervised in self.supervisor.processes.items():
            say(f"chaos: {name}: {len(supervised.exits)} exits, codes {[code for _, code in supervised.exits]}")
        for failure in self.failures:
            say(f"chaos: FAILED: {failure}")
        say(
            summary_line(
                sent=sent,
                stored=stored,
                lost=lost,
                dup=dup,
                kept=kept,
                expected=expected,
                faults=self.injected,
                recoveries=self.recoveries,
            )
        )
        return 1 if self.failures else 0

    def sent_so_far(self) -> int:
        return sum(self.offsets.log_end().values()) - len(self.malformed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1, help="the faults, their moments and the load (default 1)")
    parser.add_argument("--faults", type=int, default=20, help="how many faults (default 20)")
    parser.add_argument("--events", type=int, default=200_000, help="events to send at least (default 200000)")
    parser.add_argument("--rate", type=float, default=5000.0, help="events per second (default 5000)")
    parser.add_argument("--scenario", choices=["random", "crash-loop"], default="random")
    parser.add_argument(
        "--kinds",
        type=lambda text: text.split(","),
        default=list(FAULT_KINDS),
        help=f"faults to draw from, comma-separated (default all: {','.join(FAULT_KINDS)})",
    )
    parser.add_argument(
        "--membership",
        choices=["static", "dynamic"],
        help="the bridges' consumer-group membership (default: static for the crash loop's one bridge, dynamic "
        "for two bridges: Tansu 0.6's static membership stalls a group of several; docs/testing.md)",
    )
    parser.add_argument("--max-recovery", type=float, default=30.0, help="seconds a fault may take (default 30)")
    parser.add_argument("--partition-seconds", type=float, default=60.0, help="PostgreSQL unreachable (default 60)")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--data-dir", type=Path, default=Path(".data/chaos"))
    return parser


@contextlib.contextmanager
def terminating_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT unwind the run, so that the servers and processes are stopped."""

    def interrupt(signum: int, frame: object) -> None:
        # Once: a second signal must not break off the stopping of what was started.
        for other in (signal.SIGTERM, signal.SIGINT):
            signal.signal(other, signal.SIG_IGN)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    with terminating_on_signals(), contextlib.ExitStack() as stack:
        try:
            return ChaosRun(args, args.data_dir.absolute(), stack).run()
        except devservices.ServiceError as problem:
            say(f"chaos: {problem}")
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
