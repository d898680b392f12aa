"""Runtime control of the emitter (POST /emitter/configure and /emitter/burst): the
services against the real Redis, a real emitter process following them on a real topic,
and the endpoints through HTTP."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from emitter.selectors import control_redis, emitter_control_get
from emitter.services import emitter_burst, emitter_configure
from eventpipeline.kafka import topics_ensure
from tests.conftest import database_url, topic_records

PROJECT_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture
def control_key(settings: Any) -> Iterator[str]:
    settings.EMITTER_CONTROL_KEY = f"test-emitter-control-{uuid.uuid4().hex[:8]}"
    yield settings.EMITTER_CONTROL_KEY
    control_redis().delete(settings.EMITTER_CONTROL_KEY)


def test_nothing_asked_is_version_zero_with_nothing_set(control_key: str) -> None:
    control = emitter_control_get()
    assert (control.version, control.signals_per_second, control.burst_mode, control.burst_until) == (
        0,
        None,
        None,
        None,
    )


def test_each_request_sets_what_it_names_and_keeps_the_rest(control_key: str) -> None:
    first = emitter_configure(signals_per_second=2000, burst_mode=True)
    assert (first.version, first.signals_per_second, first.burst_mode) == (1, 2000.0, True)
    second = emitter_configure(burst_mode=False)
    assert (second.version, second.signals_per_second, second.burst_mode) == (2, 2000.0, False)
    before = time.time()
    third = emitter_burst(duration_seconds=60, multiplier=5)
    assert (third.version, third.signals_per_second, third.burst_multiplier) == (3, 2000.0, 5.0)
    assert third.burst_until is not None and before + 60 <= third.burst_until <= time.time() + 60


def emitter_run(control_key: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    topic = f"test-emitter-control-{uuid.uuid4().hex[:8]}"
    topics_ensure([topic], partitions=1)  # there before anyone subscribes to it
    command = [sys.executable, "manage.py", "emit_signals", f"--topic={topic}", "--metrics-port=0", "--no-progress"]
    process = subprocess.Popen(
        [*command, *args],
        cwd=PROJECT_DIR,
        env={**os.environ, "EMITTER_CONTROL_KEY": control_key, "DATABASE_URL": database_url()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Running (it reads the control's version as it starts, and follows only what comes
    # after): its first record is on the topic.
    records = topic_records(topic, expected=1, timeout=60)
    assert records, "the emitter did not start emitting within 60 s"
    return process, topic


def produced_at(topic: str, output: str) -> list[float]:
    """When the emitter handed each record to Kafka (its CreateTime, s since the epoch)."""
    sent = int(re.search(r"emitted (\d+) events", output).group(1))  # type: ignore[union-attr]
    records = topic_records(topic, expected=sent)
    assert len(records) == sent
    return sorted(record.timestamp()[1] / 1000 for record in records)


def rate_between(times: list[float], start: float, end: float) -> float:
    """Records per second produced from `start` to `end`."""
    return sum(1 for moment in times if start <= moment < end) / (end - start)


@pytest.mark.integration
def test_a_running_emitter_follows_a_new_rate_within_a_second(control_key: str) -> None:
    emitter, topic = emitter_run(control_key, "--rate=50", "--duration=18")
    time.sleep(2)  # emitting at its own rate
    asked_at = time.time()
    emitter_configure(signals_per_second=500)
    output, errors = emitter.communicate(timeout=60)
    assert emitter.returncode == 0, errors
    assert "following the control: 500 events/s" in output
    times = produced_at(topic, output)
    assert rate_between(times, asked_at - 2, asked_at) <= 60, "before: its own 50/s"
    assert rate_between(times, asked_at + 1, asked_at + 3) >= 400, "from a second after on: 500/s"


@pytest.mark.integration
def test_a_timed_burst_multiplies_the_rate_and_then_ends(control_key: str) -> None:
    emitter, topic = emitter_run(control_key, "--rate=50", "--duration=18")
    time.sleep(1)
    asked_at = time.time()
    emitter_burst(duration_seconds=2.5, multiplier=6)
    output, errors = emitter.communicate(timeout=60)
    assert emitter.returncode == 0, errors
    times = produced_at(topic, output)
    # The emitter reads the control within 0.5 s of the request (and a step of 0.25 s).
    assert rate_between(times, asked_at + 0.8, asked_at + 2.4) >= 240, "in the burst: 300/s"
    assert rate_between(times, asked_at + 4, asked_at + 6) <= 60, "after it: 50/s again"


@pytest.mark.integration
def test_an_injection_run_does_not_follow_the_control(
    control_key: str, django_db_serialized_rollback: None, transactional_db: Any
) -> None:
    """Its events and their times are the ground truth verify_detection checks against.
    (The emitter process records the run: a transactional database, restored afterwards as
    the other tests that run processes do, or the next one finds the flushed tables.)"""
    emitter, _ = emitter_run(control_key, "--rate=200", "--count=1000", "--inject-anomalies", "--seed=3")
    emitter_configure(signals_per_second=5000)
    output, errors = emitter.communicate(timeout=60)
    assert emitter.returncode == 0, errors
    assert "following the control" not in output
    elapsed = float(re.search(r"emitted \d+ events in ([\d.]+) s", output).group(1))  # type: ignore[union-attr]
    assert elapsed >= 4.5, "1,000 events at its own 200/s, not 5000/s"


# --- through HTTP, as docs/design.md's curl lines do -----------------------------------------
@pytest.mark.django_db
def test_post_configure_sets_the_control_and_says_what_it_is(api: APIClient, control_key: str) -> None:
    response = api.post("/emitter/configure", {"signals_per_second": 2000, "burst_mode": True}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json() == {
        "version": 1,
        "signals_per_second": 2000.0,
        "burst_mode": True,
        "burst": None,
        "follows_within_seconds": 0.5,
    }
    assert emitter_control_get().signals_per_second == 2000.0


@pytest.mark.django_db
def test_post_burst_starts_a_timed_burst(api: APIClient, control_key: str) -> None:
    response = api.post("/emitter/burst", {"duration_seconds": 60, "multiplier": 5}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["burst"]["multiplier"] == 5.0
    until = datetime.fromisoformat(body["burst"]["until"]).timestamp()
    assert time.time() + 55 < until <= time.time() + 60


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("url", "body", "field", "reason"),
    [
        ("/emitter/configure", {"signals_per_second": 0}, "signals_per_second", "must be more than 0"),
        ("/emitter/configure", {"signals_per_second": "fast"}, "signals_per_second", "must be a number"),
        ("/emitter/configure", {"signals_per_second": 10**9}, "signals_per_second", "must be at most 1,000,000"),
        ("/emitter/configure", {"burst_mode": "sometimes"}, "burst_mode", "Must be a valid boolean."),
        ("/emitter/configure", {"signals_per_sec": 2000}, "signals_per_sec", "is not a field of this request"),
        ("/emitter/configure", {}, "non_field_errors", "give signals_per_second, burst_mode or both"),
        ("/emitter/burst", {"multiplier": 5}, "duration_seconds", "This field is required."),
        ("/emitter/burst", {"duration_seconds": 0, "multiplier": 5}, "duration_seconds", "must be at least 1"),
        ("/emitter/burst", {"duration_seconds": 60, "multiplier": 1000}, "multiplier", "must be at most 100"),
    ],
)
def test_a_bad_request_is_a_400_naming_the_field_and_changes_nothing(
    api: APIClient, control_key: str, url: str, body: dict[str, Any], field: str, reason: str
) -> None:
    response = api.post(url, body, format="json")
    assert response.status_code == 400
    assert response.json() == {field: [reason]}
    assert emitter_control_get().version == 0


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/emitter/configure", "/emitter/burst"])
def test_controlling_the_emitter_needs_credentials(url: str, control_key: str) -> None:
    assert APIClient().post(url, {"signals_per_second": 1}, format="json").status_code == 401
    assert emitter_control_get().version == 0
