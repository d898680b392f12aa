"""Celery queue depth as read from the real Redis broker: tasks waiting, priorities included."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from django.conf import settings
from kombu.exceptions import OperationalError
from prometheus_client import CollectorRegistry, generate_latest

from eventpipeline.celery import app
from eventpipeline.metrics import CeleryQueueLengths
from eventpipeline.queues import celery_queue_lengths, celery_queue_names
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"test-depth-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    client.delete(*[name, *(f"{name}\x06\x16{step}" for step in (3, 6, 9))])


def test_every_waiting_task_counts_whatever_its_priority(queue: str) -> None:
    for priority in (None, 0, 2, 5, 9):
        app.send_task("eventpipeline.never_run", queue=queue, priority=priority)
    keys = redis.Redis.from_url(settings.CELERY_BROKER_URL).keys(f"{queue}*")
    assert len(keys) > 1, "the priorities should have made kombu use more than one list"
    assert celery_queue_lengths(app=app, queues=[queue]) == {queue: 5}


def test_a_queue_nothing_was_sent_to_is_empty(queue: str) -> None:
    assert celery_queue_lengths(app=app, queues=[queue, f"{queue}-other"]) == {queue: 0, f"{queue}-other": 0}


def test_the_pipeline_queues_come_from_the_settings() -> None:
    assert celery_queue_names() == [settings.STORE_QUEUE, settings.DETECT_QUEUE, settings.CELERY_TASK_DEFAULT_QUEUE]


def test_a_broker_that_does_not_answer_is_an_error_soon(queue: str) -> None:
    absent = Celery("absent", broker=f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    with pytest.raises(OperationalError):
        celery_queue_lengths(app=absent, queues=[queue])
    assert time.monotonic() - started < 15


def test_the_bridge_exports_what_it_reads_at_each_scrape() -> None:
    lengths = {"store": 3, "detect": 0}
    registry = CollectorRegistry()
    registry.register(CeleryQueueLengths(lambda: lengths))
    assert registry.get_sample_value("celery_queue_length", {"queue": "store"}) == 3
    lengths["store"] = 7
    assert registry.get_sample_value("celery_queue_length", {"queue": "store"}) == 7
    assert registry.get_sample_value("celery_queue_length", {"queue": "detect"}) == 0


def test_a_broker_that_does_not_answer_leaves_the_metric_out_not_the_scrape() -> None:
    def unreachable() -> dict[str, int]:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    registry = CollectorRegistry()
    registry.register(CeleryQueueLengths(unreachable))
    exposition = generate_latest(registry).decode()
    assert "celery_queue_length{" not in exposition
