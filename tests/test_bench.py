"""scripts/bench.py's CPU count: the processes the bench started and what runs under them,
found by process id, and nothing else on the machine (not even another Celery worker)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from types import ModuleType

import psutil
import pytest

from tests.conftest import REPO, Pipeline, wait_for


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
