"""The Celery application. Configuration lives in settings.py under the CELERY_ prefix."""

from __future__ import annotations

import logging.config
import os
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.apps.beat import Beat
from celery.signals import celeryd_init, worker_init, worker_process_shutdown
from celery.worker.request import Request
from django.conf import settings
from django.db import close_old_connections

from eventpipeline.serialization import register_orjson_for_json, use_orjson_for_redis_envelopes

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventpipeline.settings")
# A process-wide swap, on purpose and in one place: kombu's "json" serializer is orjson
# from here on, for every Celery message this process sends or reads; the wire format
# stays kombu's (eventpipeline/serialization.py). The same for the Redis transport's envelopes.
register_orjson_for_json()
use_orjson_for_redis_envelopes()


def closed_redis_channels_raise_connection_errors() -> None:
    """kombu 5.7.0's Redis transport, on a channel whose connection was already closed,
    fails with AttributeError("'NoneType' object has no attribute 'hostname'") instead of
    a connection error.

    It happens when Redis goes away while a BRPOP is in flight. Celery's consumer then
    collects the lost connection (Connection.collect), which stops at the channel whose
    close fails and clears the transport's client all the same; then it closes the
    connection under ignore_errors, which closes the default channel left open; closing
    it restores its unacked messages, which needs a new Redis client, which reads the
    client that is gone. ignore_errors lets connection errors pass, not AttributeError, so
    the worker died with "Unrecoverable error" (seen in 1 of 3 runs of
    tests/test_redis_restart.py without this guard; kombu issue 582 reported the same
    for kombu 3). As a connection error it is ignored like the others: the messages stay
    in Redis's unacked index and come back after CELERY_VISIBILITY_TIMEOUT, or the bridge
    re-dispatches them (docs/operations.md, "Redis restarted").
    """
    import redis
    from kombu.transport import redis as kombu_redis

    channel: Any = kombu_redis.Channel  # typed stubs do not know its private methods
    connparams = channel._connparams
    if hasattr(connparams, "unguarded"):
        return

    def guarded(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("the connection to Redis was closed (kombu channel of a lost connection)")
        return connparams(self, asynchronous=asynchronous)

    guarded.unguarded = connparams  # type: ignore[attr-defined]
    channel._connparams = guarded


closed_redis_channels_raise_connection_errors()


def redis_channels_keep_their_client() -> None:
    """kombu 5.7.0's Redis transport makes a new `redis.Redis` on its channel's pool for
    every message it publishes (the bridge's two per batch) and for every message a worker
    keeps among, or takes off, the unacknowledged (two per task): `Channel.conn_or_acquire`
    calls `_create_client` each time. Making one fills its table of reply callbacks, about
    as much CPU as the command it is made for (docs/performance.md, "A Redis client per
    message"). Each channel now keeps the one it made while its pool stays the same; a
    channel that dropped its pool (kombu does on close, after a fork, or when the first
    ping fails) makes one on the new pool. A redis-py client made on a pool holds no
    connection of its own, so it is safe to share between threads: each command, and each
    pipeline, takes a connection of the pool. The asynchronous client (BRPOP) was made
    once already."""
    from kombu.transport import redis as kombu_redis

    channel: Any = kombu_redis.Channel  # typed stubs do not know its private methods
    create_client = channel._create_client
    if hasattr(create_client, "uncached"):
        return

    def kept(self: Any, asynchronous: bool = False) -> Any:
        if asynchronous:
            return create_client(self, asynchronous=True)
        client = self.__dict__.get("_eventpipeline_client")
        if client is None or client.connection_pool is not self.pool:
            client = self._eventpipeline_client = create_client(self)
        return client

    kept.uncached = create_client  # type: ignore[attr-defined]
    channel._create_client = kept


redis_channels_keep_their_client()

app = Celery("eventpipeline")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@celeryd_init.connect
def worker_json_from_the_start(instance: Any, **_: Any) -> None:
    """With LOG_FORMAT=json the worker's first lines are JSON too. Its banner (queues,
    concurrency) is printed straight to stdout, outside logging: it prints none, as with
    --quiet. And what it warns about before Django sets up logging (running as root) goes
    through LOGGING already."""
    if settings.LOG_FORMAT != "json":
        return
    instance.quiet = True
    logging.config.dictConfig(settings.LOGGING)
    logging.captureWarnings(True)


class QuietBeat(Beat):
    """`celery beat`, which prints a banner too, and without it with LOG_FORMAT=json. Beat
    sends no signal before its banner, hence a class of its own."""

    def __init__(self, *, quiet: bool = False, **kwargs: Any) -> None:
        super().__init__(quiet=quiet or settings.LOG_FORMAT == "json", **kwargs)


app.Beat = app.subclass_with_self(QuietBeat)  # type: ignore[misc]  # a cached property, which may be set


class DecodedOnceRequest(Request):
    """The request of a batch task, which hands the pool the body Celery has decoded already.

    Celery decodes every task's body when the worker receives it (to tell a protocol 2
    message from a "hybrid" one, celery/celery#4358), keeps it, and then passes the pool
    the body as it came, which the pool decodes again before running the task: a batch of
    500 events was decoded twice (docs/performance.md, "Celery's envelope"). Marked as
    decoded, the body goes to the pool as Celery's own hybrid messages do: the thread pool
    takes it as it is, and a prefork pool pickles it instead of the text. With the thread
    pool the task's arguments are then the request's own, which Celery uses again to
    record a failure or to send the task anew: a batch task must not change them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request: Any = self  # Celery's own attributes, which its stubs do not know
        if not request._decoded:
            request._body = request._payload
            request._decoded = True
            request._content_type = request._content_encoding = None


class BatchTask(Task):
    """The base of the batch tasks (store_signals, detect_anomalies)."""

    Request = "eventpipeline.celery:DecodedOnceRequest"


def batch_task_start(task: Task) -> None:
    """What a batch task does first. Connections are kept between tasks
    (CELERY_DB_REUSE_MAX): drop one that broke, as Django does at the start of each request
    (not in eager calls, like Celery's own Django fixup)."""
    if not task.request.is_eager:
        close_old_connections()


def batch_task_retry(
    task: Task, error: Exception, *, max_retries: int, unreachable: tuple[type[Exception], ...]
) -> None:
    """The batch tasks' one policy for a failure. Retry with back-off while retries are
    left; then re-raise when a server could not be reached, so that the task fails and the
    bridge, which has not committed the batch's offsets, hands it over again. Returns only
    when the caller must give the batch up, in its own way."""
    if task.request.retries < max_retries:
        raise task.retry(exc=error, countdown=min(2**task.request.retries, 30), max_retries=max_retries) from error
    if isinstance(error, unreachable):
        raise error


@worker_init.connect
def serve_worker_metrics(**_: Any) -> None:
    """Serve the worker's Prometheus metrics from its main process (port 8013).

    Prefork children each count in their own process; with PROMETHEUS_MULTIPROC_DIR set
    they write to files there and the main process serves the sum. The directory is
    emptied at start so a restarted worker does not report its predecessor's counts.
    """
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    port = settings.WORKER_METRICS_PORT
    if not port:
        return
    multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not multiproc_dir:
        start_http_server(port, addr=settings.BIND_ADDRESS)
        return
    for stale in Path(multiproc_dir).glob("*.db"):
        stale.unlink()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=settings.BIND_ADDRESS, registry=registry)


@worker_process_shutdown.connect
def forget_worker_process(pid: int | None = None, **_: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and pid:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def workers_ping(*, timeout: float, limit: int | None = None, destination: list[str] | None = None) -> list[str]:
    """The names of the workers that answer a ping within `timeout` (of `destination`
    only, when given), on a broker connection of its own with socket timeouts and no
    retries: the app's own would wait for a broker that does not answer, and try again,
    for ever."""
    bounded = {"socket_timeout": timeout + 1, "socket_connect_timeout": timeout, "max_retries": 0}
    with app.connection_for_write(transport_options=bounded) as broker:
        replies = app.control.ping(destination=destination, timeout=timeout, limit=limit, connection=broker) or []
    return sorted(name for reply in replies for name in reply)
