"""An unreachable Kafka is reported once, plainly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from django.test import override_settings

from eventpipeline.kafka import KafkaUnreachable, consumer_config, topics_ensure
from tests.conftest import REPO


@override_settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
def test_an_unreachable_broker_is_one_clear_error(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(KafkaUnreachable, match=r"cannot reach Kafka at KAFKA_BOOTSTRAP_SERVERS=127\.0\.0\.1:1"):
        topics_ensure(["any-topic"], partitions=1, timeout=1)
    assert "Connect to" not in capfd.readouterr().err, "librdkafka's reconnect lines should not flood the terminal"


@override_settings(KAFKA_SESSION_TIMEOUT_MS=6000, KAFKA_MAX_POLL_INTERVAL_MS=30000)
def test_the_bridge_consumer_is_a_static_member_with_short_timeouts() -> None:
    """(docs/design.md, "Consumer group")"""
    config = consumer_config("group", instance_id="bridge-a")
    assert config["group.instance.id"] == "bridge-a"
    assert config["session.timeout.ms"] == 6000
    assert config["heartbeat.interval.ms"] == 600
    assert config["max.poll.interval.ms"] == 30000
    assert "group.instance.id" not in consumer_config("group", instance_id=""), "empty: a dynamic member"


def test_the_default_instance_id_is_the_host_name() -> None:
    """Unique per container under compose replicas, stable across a container's restarts."""
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "--no-imports",
            "-c",
            "from django.conf import settings; print(settings.BRIDGE_INSTANCE_ID)",
        ],
        cwd=REPO,
        env={name: value for name, value in os.environ.items() if name != "BRIDGE_INSTANCE_ID"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"bridge-{socket.gethostname()}"
