"""Detection end to end: emit_signals --inject-anomalies -> Kafka -> bridge -> workers ->
anomalies, judged by verify_detection, the way a user checks it.

Real broker, Redis, PostgreSQL, bridge and worker processes; each test on its own topics,
queues and Redis keys.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from anomalies_app.models import Anomaly
from anomalies_app.rules import DEFAULT_RULES
from emitter.models import InjectionRun
from signals_app.models import Signal
from tests.conftest import REPO, Pipeline, topic_values, wait_for
from tests.test_pipeline import lose_redis_state

pytestmark = pytest.mark.integration


def emit_injected(pipeline: Pipeline, *, count: int, rate: int, seed: int) -> subprocess.Popen[bytes]:
    return pipeline.start_emitter(
        "--inject-anomalies", "--inject-every", "40", "--count", str(count), "--rate", str(rate),
        "--seed", str(seed), "--users", "400",
    )  # fmt: skip


def verify_detection(pipeline: Pipeline) -> str:
    """Run `manage.py verify_detection`; its table, after asserting it passed."""
    result = subprocess.run(
        [sys.executable, "manage.py", "verify_detection", "--wait", "180"],
        cwd=REPO,
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr + pipeline.log_tail()
    assert "every rule: precision 1.000, recall 1.000" in result.stdout
    return result.stdout


def published_anomalies(pipeline: Pipeline, expected: int) -> list[int]:
    """The ids of the anomalies published and not later merged or withdrawn (each once)."""
    messages = [json.loads(value) for value in topic_values(pipeline.anomalies_topic, expected=expected, timeout=10)]
    gone = {message["id"] for message in messages if "merged_into" in message or "withdrawn" in message}
    published = [message["id"] for message in messages if "anomaly_type" in message]
    assert len(published) == len(set(published)), "each anomaly published once"
    return sorted(set(published) - gone)


def snapshot() -> list[tuple[object, ...]]:
    return sorted(Anomaly.objects.values_list("user_id", "anomaly_type", "episode_start_ms", "evidence__value"))


def test_an_injected_run_is_detected_exactly_and_again_after_a_replay(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    pipeline.start_bridge()
    emitter = emit_injected(pipeline, count=20_000, rate=4000, seed=3)
    assert emitter.wait(timeout=300) == 0, pipeline.log_tail()
    run = InjectionRun.objects.get()
    assert run.finished and run.events >= 20_000
    table = verify_detection(pipeline)
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:-1]}
    assert set(rows) == set(DEFAULT_RULES), table
    assert all(int(injected) > 10 and injected == detected for injected, detected, *_ in rows.values()), table
    injected = run.scenarios.exclude(anomaly_type="").count()
    assert Anomaly.objects.count() == injected > 50
    wait_for(pipeline.all_committed, timeout=60, what="offsets committed up to the end")
    first = snapshot()
    assert published_anomalies(pipeline, injected) == sorted(Anomaly.objects.values_list("id", flat=True))

    # The same Kafka records, consumed again from the beginning by a new consumer group.
    pipeline.replay()
    verify_detection(pipeline)
    assert snapshot() == first
    assert published_anomalies(pipeline, injected) == sorted(Anomaly.objects.values_list("id", flat=True))


def test_losing_redis_in_the_middle_of_a_run_still_detects_exactly(pipeline: Pipeline) -> None:
    """The worker killed, and Redis losing every task, result and window, mid-run."""
    pipeline.start_worker()
    # The lost tasks come back when the bridge sees Redis lost its data, or
    # BRIDGE_REDISPATCH_SECONDS after their hand-over (those the killed worker held).
    pipeline.start_bridge()
    emitter = emit_injected(pipeline, count=30_000, rate=3000, seed=5)
    wait_for(lambda: Signal.objects.count() > 8000, timeout=120, what="the run to be under way")
    pipeline.kill("worker", signal.SIGKILL)
    stored_at_kill = Signal.objects.count()
    lose_redis_state(pipeline)
    time.sleep(1)
    pipeline.start_worker()
    assert emitter.wait(timeout=300) == 0, pipeline.log_tail()
    assert stored_at_kill < InjectionRun.objects.get().events, "the crash came too late to test anything"
    verify_detection(pipeline)
