"""How soon the pipeline consumes again after a bridge crashes or restarts, with the
defaults users get (docs/operations.md, "Recovery after a crash").

Real Tansu, PostgreSQL and Redis, the real bridge and worker processes, a steady stream
from the real emitter. The time asserted is what a user waits: from the start of the new
bridge process until it hands over its first batch.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from signals_app.models import DeadLetter, Signal
from tests.conftest import Pipeline, wait_for
from tests.test_pipeline import START_MS, expected_event_ids, stored_event_ids, wait_until_stored

pytestmark = pytest.mark.integration

# The promise of issue 13: consuming again within 15 s of the last restart.
RECOVERY_SECONDS = 15.0
# The bridge's line for a batch it read (bridge/consumer.py, batch_log).
FIRST_BATCH = re.compile(r"batch \S+: \d+ events, ")
# A bridge stopped with nothing in flight (joining) is gone within this long.
PROMPT_STOP_SECONDS = 3.0


def consuming_after(pipeline: Pipeline, started_at: float, timeout: float = 60) -> float:
    """Seconds from `started_at` until the bridge started last logs its first batch."""
    wait_for(
        lambda: FIRST_BATCH.search(pipeline.log_of("bridge")) is not None,
        timeout=timeout,
        interval=0.05,
        what="a first batch",
    )
    return time.monotonic() - started_at


def start_bridge(pipeline: Pipeline) -> float:
    started_at = time.monotonic()
    pipeline.start_bridge()
    return started_at


def test_a_bridge_killed_or_restarted_mid_run_consumes_again_within_15_s(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    first_start = start_bridge(pipeline)
    emitter = pipeline.start_emitter(
        "--count", "40000", "--rate", "1000", "--seed", "31", "--users", "500", "--start-ms", str(START_MS)
    )
    first_join = consuming_after(pipeline, first_start)
    wait_for(lambda: Signal.objects.count() > 3000, timeout=60, what="the run to be under way")
    pipeline.kill("bridge", signal.SIGKILL)
    time.sleep(1)  # a supervisor's restart delay
    killed_restart = start_bridge(pipeline)
    after_kill = consuming_after(pipeline, killed_restart)

    asked = time.monotonic()
    assert pipeline.stop("bridge", timeout=35, sig=signal.SIGTERM) == 0  # it finishes its batches first
    stopped_in = time.monotonic() - asked
    time.sleep(1)
    restart = start_bridge(pipeline)
    after_sigterm = consuming_after(pipeline, restart)
    print(
        f"first join: consuming after {first_join:.1f} s; after kill -9: {after_kill:.1f} s; "
        f"after SIGTERM (gone in {stopped_in:.1f} s): {after_sigterm:.1f} s"
    )
    assert first_join < RECOVERY_SECONDS
    assert after_kill < RECOVERY_SECONDS
    assert after_sigterm < RECOVERY_SECONDS

    assert emitter.wait(timeout=120) == 0
    wait_until_stored(pipeline, 40_000)
    assert Signal.objects.count() == 40_000
    assert stored_event_ids() == expected_event_ids(seed=31, users=500, count=40_000, rate=1000)
    assert DeadLetter.objects.count() == 0


# Ten restarts: how each bridge is stopped, and whether it had joined its group by then.
CRASH_LOOP = [
    (signal.SIGKILL, "joined"),
    (signal.SIGTERM, "joining"),
    (signal.SIGKILL, "joining"),
    (signal.SIGTERM, "joined"),
    (signal.SIGTERM, "joining"),
    (signal.SIGKILL, "joining"),
    (signal.SIGKILL, "joined"),
    (signal.SIGTERM, "joining"),
    (signal.SIGKILL, "joining"),
    (signal.SIGTERM, "joining"),
]


def test_a_crash_loop_of_ten_restarts_consumes_again_within_15_s_of_the_last(pipeline: Pipeline) -> None:
    """What a supervisor does to a bridge that keeps dying: start it again 1 s later, ten
    times in about a minute, killed or stopped, some of them while still joining."""
    pipeline.start_worker()
    start_bridge(pipeline)
    emitter = pipeline.start_emitter(
        "--count", "40000", "--rate", "500", "--seed", "37", "--users", "500", "--start-ms", str(START_MS)
    )
    wait_for(lambda: Signal.objects.count() > 1000, timeout=60, what="the run to be under way")
    loop_started = time.monotonic()
    stops: list[str] = []
    for sig, when in CRASH_LOOP:
        if when == "joined":
            wait_for(lambda: "assigned [" in pipeline.log_of("bridge"), timeout=30, what="the bridge's partitions")
        else:
            wait_for(lambda: "bridge: " in pipeline.log_of("bridge"), timeout=30, what="the bridge to start joining")
            time.sleep(0.3)
            assert "assigned [" not in pipeline.log_of("bridge"), "meant to stop it during its join"
        asked = time.monotonic()
        if sig == signal.SIGKILL:
            pipeline.kill("bridge", sig)
        else:
            try:
                returncode = pipeline.stop("bridge", timeout=PROMPT_STOP_SECONDS, sig=sig)
            except subprocess.TimeoutExpired:
                pytest.fail(f"SIGTERM while {when}: the bridge did not stop within {PROMPT_STOP_SECONDS} s")
            assert returncode == 0, pipeline.log_of("bridge")
        stops.append(f"{signal.Signals(sig).name} while {when}: gone in {time.monotonic() - asked:.1f} s")
        time.sleep(1)
        last_start = start_bridge(pipeline)
    recovery = consuming_after(pipeline, last_start)
    print(f"ten restarts in {last_start - loop_started:.0f} s; consuming {recovery:.1f} s after the last")
    print("\n".join(stops))
    assert recovery < RECOVERY_SECONDS

    assert emitter.wait(timeout=180) == 0
    wait_until_stored(pipeline, 40_000)
    assert Signal.objects.count() == 40_000
    assert stored_event_ids() == expected_event_ids(seed=37, users=500, count=40_000, rate=500)
    assert DeadLetter.objects.count() == 0
