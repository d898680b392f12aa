"""A missing or malformed setting stops the process at start with one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def start(env: dict[str, str] | None = None, *, unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO,
        env={**{name: value for name, value in os.environ.items() if name not in unset}, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"BATCH_SIZE": "abc"}, "eventpipeline: configuration error: BATCH_SIZE must be an integer, got 'abc'"),
        ({"BATCH_SIZE": "0"}, "eventpipeline: configuration error: BATCH_SIZE must be between 1 and 100000, got 0"),
        ({"BURST_MODE": "maybe"}, "BURST_MODE must be one of true/false/1/0/yes/no/on/off, got 'maybe'"),
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL must be a URL starting with postgres://"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL must be a URL starting with redis://"),
        ({"DEBUG": "false", "SECRET_KEY": ""}, "SECRET_KEY is required (make run and make test supply"),
        ({"DEBUG": "true", "SECRET_KEY": ""}, "SECRET_KEY is required (make run and make test supply"),
        ({"API_THROTTLE_RATE": "fast"}, "API_THROTTLE_RATE must be a rate such as 6000/min"),
        ({"API_THROTTLE_RATE": "0/min"}, "API_THROTTLE_RATE must be a rate such as 6000/min"),
        ({"LOG_FORMAT": "xml"}, "eventpipeline: configuration error: LOG_FORMAT must be one of text/json, got 'xml'"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be one of DEBUG/INFO/WARNING/ERROR/CRITICAL, got 'loud'"),
        ({"DLQ_MAX_RATIO": "5%"}, "eventpipeline: configuration error: DLQ_MAX_RATIO must be a number, got '5%'"),
        ({"DLQ_MAX_RATIO": "0"}, "DLQ_MAX_RATIO must be above 0 and at most 1, got 0.0"),
        ({"DLQ_MAX_RATIO": "1.5"}, "DLQ_MAX_RATIO must be above 0 and at most 1, got 1.5"),
        (
            {"BRIDGE_INSTANCE_ID": "bridge 1"},
            "BRIDGE_INSTANCE_ID may hold only letters, digits, '.', '_' and '-' (1 to 249), got 'bridge 1'",
        ),
        (
            {"KAFKA_SESSION_TIMEOUT_MS": "45000"},
            "KAFKA_MAX_POLL_INTERVAL_MS must be at least KAFKA_SESSION_TIMEOUT_MS (45000), got 30000",
        ),
    ],
)
def test_a_bad_setting_stops_the_process_with_one_line(env: dict[str, str], line: str) -> None:
    result = start(env)
    assert result.returncode == 1
    assert line in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_good_settings_start() -> None:
    assert start().returncode == 0


def test_a_missing_secret_key_stops_the_process_with_one_line() -> None:
    result = start(unset=("SECRET_KEY",))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "eventpipeline: configuration error: SECRET_KEY is required (make run and make test supply a development one)"
    )


def test_a_missing_debug_means_production() -> None:
    """Closed by default: without DEBUG the process runs with production settings."""
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "--no-imports",
            "-c",
            "from django.conf import settings; print(settings.DEBUG)",
        ],
        cwd=REPO,
        env={**{name: value for name, value in os.environ.items() if name != "DEBUG"}, "SECRET_KEY": "x" * 50},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
