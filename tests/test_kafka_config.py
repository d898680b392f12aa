"""An unreachable Kafka is reported once, plainly."""

from __future__ import annotations

import pytest
from django.test import override_settings

from eventpipeline.kafka import KafkaUnreachable, topics_ensure


@override_settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
def test_an_unreachable_broker_is_one_clear_error(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(KafkaUnreachable, match=r"cannot reach Kafka at KAFKA_BOOTSTRAP_SERVERS=127\.0\.0\.1:1"):
        topics_ensure(["any-topic"], partitions=1, timeout=1)
    assert "Connect to" not in capfd.readouterr().err, "librdkafka's reconnect lines should not flood the terminal"
