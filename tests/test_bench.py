"""scripts/bench.py's CPU count: the processes the bench started and what runs under them,
found by process id, and nothing else on the machine (not even another Celery worker).
Its latency run: percentiles, each record's commit time from the committed offsets seen,
peak memory per process tree, the pace, and (marker `integration`) a short run."""

from __future__ import annotations

import importlib.util
import os
import random
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest
from celery.utils.nodenames import host_format

from tests.conftest import REPO, Pipeline, database_url, wait_for


def load_script(name: str) -> ModuleType:
    # scripts/ is not a package: load the file the way `python scripts/<name>.py` does.
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


bench = load_script("bench")
devservices = load_script("devservices")

BURN_S = 0.3
# What the kernel's clock ticks (1/100 s) and float sums can take off BURN_S as read back.
COUNTED_S = BURN_S - 0.03
# Uses BURN_S of CPU in all (start-up included), says so, then waits for its stdin to close.
BURNER = f"""
import sys, time
while time.process_time() < {BURN_S}:
    pass
print("done", flush=True)
sys.stdin.read()
"""
# Runs BURNER as its own child and reaps it, says so, then waits for its stdin to close.
PARENT = f"""
import subprocess, sys
subprocess.run([sys.executable, "-c", {BURNER!r}], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
print("done", flush=True)
sys.stdin.read()
"""


def started(code: str) -> subprocess.Popen[str]:
    """`python -c code`, once it has printed "done"."""
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )  # fmt: skip
    assert process.stdout is not None and process.stdout.readline() == "done\n"
    return process


def ended(process: subprocess.Popen[str]) -> None:
    """Let it end, and reap it."""
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(timeout=30) == 0


def pids_under(root: psutil.Process) -> set[int]:
    return {process.pid for process in bench.process_tree(root)}


def own_cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def test_a_child_counts_while_it_runs_and_after_it_is_reaped() -> None:
    root = psutil.Process()
    before = bench.tree_cpu_seconds(root)
    child = started(BURNER)
    running = bench.tree_cpu_seconds(root)
    assert child.pid in pids_under(root)
    assert running - before >= COUNTED_S, "a live child counts by its own time"
    ended(child)
    reaped = bench.tree_cpu_seconds(root)
    assert child.pid not in pids_under(root)
    assert reaped - before >= COUNTED_S, "a reaped child counts in its parent's children_* time"


def test_a_grandchild_reaped_by_a_descendant_counts() -> None:
    """The grandchild has ended; its time is in its parent's children_* (a live
    descendant's), the way a PostgreSQL backend's is in the postmaster's."""
    root = psutil.Process()
    before = bench.tree_cpu_seconds(root)
    child = started(PARENT)
    try:
        assert bench.tree_cpu_seconds(root) - before >= COUNTED_S
    finally:
        ended(child)


def test_a_process_not_under_a_root_is_not_counted() -> None:
    root = started("print('done', flush=True); import sys; sys.stdin.read()")
    try:
        tree = psutil.Process(root.pid)
        before = bench.tree_cpu_seconds(tree)
        sibling = started(BURNER)
        assert sibling.pid not in pids_under(tree)
        ended(sibling)
        assert bench.tree_cpu_seconds(tree) - before < BURN_S / 3
    finally:
        ended(root)


def test_a_root_that_ended_is_not_measured_and_nothing_is_negative() -> None:
    root = started("print('done', flush=True); import sys; sys.stdin.read()")
    roots = {"bridge": psutil.Process(root.pid), "redis": None}
    before = bench.cpu_seconds_by_component(roots)
    assert before["bridge"] is not None and before["redis"] is None
    ended(root)
    after = bench.cpu_seconds_by_component(roots)
    assert after == {"bridge": None, "redis": None}
    assert bench.cpu_used(before, after) == {"bridge": None, "redis": None}
    # A count that went down (a descendant ended outside its tree) is not a negative figure.
    assert bench.cpu_used({"kafka": 2.0, "postgresql": 1.0}, {"kafka": 1.5, "postgresql": 1.25}) == {
        "kafka": None,
        "postgresql": 0.25,
    }


def test_the_cpu_line_keeps_its_format() -> None:
    used = {"store worker": 0.33, "bridge": 0.39, "postgresql": None, "detect worker": 0.75}
    assert bench.cpu_line(used, 30_000) == (
        "  CPU ms per 1,000 events: bridge 13, detect worker 25, postgresql not measured, store worker 11"
    )


def test_the_servers_devservices_started_are_read_from_its_variable() -> None:
    variable = devservices.pids_variable({"postgres": 123, "redis": 456, "kafka": 789})
    assert bench.started_servers(variable) == {"postgresql": 123, "redis": 456, "kafka": 789}
    assert bench.started_servers("") == {}
    assert bench.started_servers("redis=1,something=2,kafka=x") == {"redis": 1}

    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    roots, not_counted = bench.server_roots(f"redis={os.getpid()},kafka={gone.pid}")
    assert roots["redis"] == psutil.Process() and roots["kafka"] is None
    assert not_counted == ["postgresql"]
    assert bench.server_roots(None) == ({}, ["postgresql", "redis", "kafka"])


def test_a_worker_that_exits_while_starting_stops_the_bench(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    with pytest.raises(SystemExit, match="a worker exited while starting"):
        bench.workers_ready(["nobody@nowhere"], [gone], tmp_path)


@pytest.mark.integration
def test_a_worker_answering_the_ping_has_started_up(pipeline: Pipeline, tmp_path: Path) -> None:
    """The bench starts the bridge, and its clock, only when every worker answers: by then
    a worker's start-up is over, and left idle it spends next to nothing."""
    name = f"ready-{uuid.uuid4().hex[:6]}@%h"
    command = [sys.executable, "-m", "celery", "-A", "eventpipeline", "worker", "-Q", pipeline.queue]
    command += ["--without-gossip", "--without-mingle", "--loglevel", "WARNING", "-n", name]
    worker = pipeline.start("ready", command, WORKER_METRICS_PORT="0")
    bench.workers_ready([host_format(name)], [worker], tmp_path)
    started_up = own_cpu(worker.pid)
    time.sleep(2)
    idle = own_cpu(worker.pid) - started_up
    assert started_up > 0.3, "Django and Celery take more than this to start"
    assert idle < 0.1, (started_up, idle)


@pytest.mark.integration
def test_a_short_throughput_run_prints_its_lines(
    tmp_path: Path, django_db_serialized_rollback: None, transactional_db: Any
) -> None:
    """scripts/bench.py's throughput run, once, on the test database, with malformed records
    among the events (the bench waits for their offsets too, and counts only the events):
    the CPU lines name every process it started and the last line reads as scripts read it."""
    command = [sys.executable, str(REPO / "scripts" / "bench.py"), "--runs", "1", "--events", "30000"]
    command += ["--malformed-every", "100"]
    command += ["--latency-seconds", "0", "--logs", str(tmp_path)]
    env = {**os.environ, "DATABASE_URL": database_url()}
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    cpu = re.search(r"CPU ms per 1,000 events: (.*)", completed.stdout)
    assert cpu, output
    for process in ("bridge", "store worker", "detect worker"):
        assert re.search(rf"\b{process} \d+\b", cpu[1]), output
    # The COPY limit's own cost: its client, the bench's process, and the servers it counts;
    # PostgreSQL's share, when counted, cannot round to nothing if the span covers the COPY.
    copied = re.search(r"CPU ms per 1,000 rows COPYed: (.*)", completed.stdout)
    assert copied and re.search(r"\bbench \d+\b", copied[1]), output
    servers, _ = bench.server_roots(os.environ.get("DEVSERVICES_PIDS"))
    for server in servers:
        assert re.search(rf"\b{server} \d+\b", copied[1]), output
    if "postgresql" in servers:
        postgresql = re.search(r"\bpostgresql (\d+)\b", copied[1])
        assert postgresql and int(postgresql[1]) >= 1, output
    last = re.fullmatch(
        r"events_per_s=(\d+) copy_limit_per_s=(\d+) ratio=(\d+\.\d\d)", completed.stdout.strip().splitlines()[-1]
    )
    assert last, output
    assert int(last[1]) > 0 and int(last[2]) > 0, output
    assert "one refused record per 100 events" in completed.stdout, output


@pytest.mark.integration
def test_a_stray_celery_worker_is_neither_counted_nor_breaks_the_count(pipeline: Pipeline) -> None:
    """Another worker on this machine, as `make run` in another terminal has one: every
    queue (no -Q), a name of its own, the suite's Redis. The bench's own worker and the
    servers scripts/devservices.py started (when it did) are counted; the stray is in none
    of them, and its start-up CPU shows in no component."""
    worker = pipeline.start_worker("store", loglevel="INFO", queues=[pipeline.queue])
    wait_for(lambda: " ready." in pipeline.log_of("store"), timeout=120, what="the bench's worker")
    servers, _ = bench.server_roots(os.environ.get("DEVSERVICES_PIDS"))
    roots = {**servers, "store worker": psutil.Process(worker.pid)}
    before = bench.cpu_seconds_by_component(roots)

    stray_command = [sys.executable, "-m", "celery", "-A", "eventpipeline", "worker"]
    stray_command += ["-n", f"stray-{uuid.uuid4().hex[:6]}@%h", "--loglevel", "INFO"]
    stray = pipeline.start("stray", stray_command, WORKER_METRICS_PORT="0")
    wait_for(lambda: " ready." in pipeline.log_of("stray"), timeout=120, what="the stray worker")
    counted = {pid for root in roots.values() if root is not None for pid in pids_under(root)}
    used = bench.cpu_used(before, bench.cpu_seconds_by_component(roots))
    stray_cpu = own_cpu(stray.pid)

    assert stray.poll() is None, pipeline.log_of("stray")
    assert stray.pid not in counted
    assert worker.pid in counted
    assert stray_cpu > 0.5, "the stray worker's start-up must be worth noticing"
    assert all(seconds is not None for seconds in used.values()), used
    assert all(seconds < stray_cpu / 2 for seconds in used.values() if seconds is not None), (used, stray_cpu)


def test_percentiles_are_nearest_rank_and_one_of_the_values() -> None:
    values = [float(v) for v in range(1, 101)]
    random.Random(1).shuffle(values)
    assert [bench.percentile(values, point) for point in (50, 95, 99, 100)] == [50.0, 95.0, 99.0, 100.0]
    assert [bench.percentile([7.0], point) for point in (50, 99)] == [7.0, 7.0]
    # Never a value between two: the smallest that at least that share does not exceed.
    assert bench.percentile([10.0, 20.0], 50) == 10.0
    assert bench.percentile([10.0, 20.0], 51) == 20.0
    assert bench.percentile([1.0, 2.0, 3.0, 1000.0], 99) == 1000.0
    with pytest.raises(ValueError):
        bench.percentile([], 50)
    for point in (0, 101):
        with pytest.raises(ValueError):
            bench.percentile([1.0], point)


def test_a_record_is_committed_when_an_offset_above_it_is_first_seen() -> None:
    """A committed offset is the next record to read: 3 covers 0, 1 and 2, not 3. A reading
    that shows no progress, or an offset that went back, notes nothing."""
    marks = bench.CommitMarks()
    marks.saw({0: None, 1: 2}, at_ms=1100.0)
    marks.saw({0: 3, 1: 2}, at_ms=1150.0)
    marks.saw({0: 3, 1: 1}, at_ms=1200.0)
    marks.saw({0: 5, 1: 4}, at_ms=1250.0)
    assert [marks.committed_at(0, offset) for offset in range(6)] == [1150.0, 1150.0, 1150.0, 1250.0, 1250.0, None]
    assert [marks.committed_at(1, offset) for offset in range(5)] == [1100.0, 1100.0, 1250.0, 1250.0, None]
    assert marks.committed_at(2, 0) is None, "a partition never read"

    produced = [bench.Produced(0, offset, 1000 + offset) for offset in range(5)]
    produced += [bench.Produced(1, offset, 1050) for offset in range(4)]
    assert marks.covers(produced)
    latencies, missing = bench.latencies_ms(produced, marks)
    assert missing == 0
    assert latencies == [150.0, 149.0, 148.0, 247.0, 246.0, 50.0, 50.0, 200.0, 200.0]

    late = [*produced, bench.Produced(1, 4, 1240)]
    assert not marks.covers(late)
    assert bench.latencies_ms(late, marks) == (latencies, 1)
    marks.saw({1: 5}, at_ms=1300.0)
    assert marks.covers(late)
    assert bench.latencies_ms(late, marks) == ([*latencies, 60.0], 0)


def test_the_latency_line_keeps_its_format() -> None:
    latencies = [float(v) for v in range(1, 1001)]
    line = bench.latency_line(latencies, 95.4, 131.6)
    assert line == "e2e_p50_ms=500 e2e_p95_ms=950 e2e_p99_ms=990 bridge_rss_mb=95 worker_rss_mb=132"
    assert bench.LATENCY_LINE.match(line)
    unmeasured = bench.latency_line(latencies, None, 131.6)
    assert unmeasured.endswith("bridge_rss_mb=none worker_rss_mb=132")
    assert bench.LATENCY_LINE.match(unmeasured)


MEGABYTES = 50
# Holds MEGABYTES of its own (written, so resident), says so, then waits for its stdin to close.
HOLDER = f"""
import sys
held = b"x" * {MEGABYTES * 1_000_000}
print("done", flush=True)
sys.stdin.read()
"""


def test_peak_memory_counts_the_tree_and_keeps_the_peak() -> None:
    """A child's memory counts while it runs, and its peak stays once it has ended; a
    root that has ended is not measured."""
    root = psutil.Process()
    own = root.memory_info().rss
    peaks = bench.PeakRss({"bridge": root}, interval=0.05)
    peaks.start()
    child = started(HOLDER)
    running = bench.tree_rss_bytes(root)
    assert running is not None and running - own >= MEGABYTES * 0.9e6
    time.sleep(0.3)  # a few samples while it runs
    ended(child)
    assert peaks.finish()["bridge"] - own / 1e6 >= MEGABYTES * 0.9

    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone_process = psutil.Process(gone.pid)
    gone.wait()
    assert bench.tree_rss_bytes(gone_process) is None


class RecordingProducer:
    """Takes what the bench produces, refusing the first record once (a full queue)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []
        self.refused = False

    def produce(self, topic: str, *, key: bytes, value: bytes) -> None:
        if not self.refused:
            self.refused = True
            raise BufferError("queue full")
        self.records.append((topic, key, value))

    def poll(self, timeout: float) -> int:
        return 0


def test_the_latency_run_paces_its_records() -> None:
    records = [(str(n).encode(), b"v%d" % n) for n in range(300)]
    producer = RecordingProducer()
    started_at = time.monotonic()
    took = bench.produce_paced(producer, "a-topic", records, rate=1000.0)  # type: ignore[arg-type]
    assert producer.records == [("a-topic", key, value) for key, value in records]
    # 300 at 1,000/s: the last falls due at 0.299 s; none is sent before it is due.
    assert 0.28 <= took <= time.monotonic() - started_at < 2.0


@pytest.mark.integration
def test_a_short_latency_run_prints_its_line(
    tmp_path: Path, django_db_serialized_rollback: None, transactional_db: Any
) -> None:
    """scripts/bench.py's latency run alone, 5 s at 500 events/s, its processes on the
    test database; its last line read as scripts read it."""
    command = [sys.executable, str(REPO / "scripts" / "bench.py"), "--runs", "0"]
    command += ["--latency-seconds", "5", "--latency-rate", "500", "--logs", str(tmp_path)]
    env = {**os.environ, "DATABASE_URL": database_url()}
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    lines = completed.stdout.strip().splitlines()
    match = bench.LATENCY_LINE.match(lines[-1])
    assert match, output
    assert "latency: 2,500 events at 500/s asked" in output
    assert not any(line.startswith("events_per_s=") for line in lines), "--runs 0: no throughput run"
    assert 0 < int(match["p50"]) <= int(match["p95"]) <= int(match["p99"]) < 60_000, output
    # A Python process with Django loaded is tens of MB; a sampled nothing would be 0 or none.
    assert int(match["bridge_mb"]) >= 30 and int(match["worker_mb"]) >= 30, output
