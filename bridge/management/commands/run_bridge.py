"""`manage.py run_bridge`: consume signals from Kafka and hand them to Celery."""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

import redis
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from prometheus_client import REGISTRY, start_http_server

from bridge.consumer import Bridge, BridgeOptions
from bridge.status import StatusReporter
from eventpipeline.celery import app
from eventpipeline.kafka import consumer_config, log_end_probe, producer_config, topics_ensure
from eventpipeline.metrics import CeleryQueueLengths
from eventpipeline.queues import celery_queue_lengths, celery_queue_names
from signals_app.messages import Limits

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Consume signals from Kafka in batches, validate them and hand them to Celery to be stored."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--topic", default=settings.SIGNALS_TOPIC)
        parser.add_argument("--dlq-topic", default=settings.DLQ_TOPIC)
        parser.add_argument("--group-id", default=settings.BRIDGE_GROUP_ID)
        parser.add_argument(
            "--instance-id", default=settings.BRIDGE_INSTANCE_ID, help="group.instance.id; empty: dynamic membership"
        )
        parser.add_argument("--batch-size", type=int, default=settings.BATCH_SIZE)
        parser.add_argument("--metrics-port", type=int, default=settings.BRIDGE_METRICS_PORT, help="0 disables")

    def handle(self, *args: Any, **options: Any) -> None:
        # Until the bridge runs, a stop request simply ends the process (rc 0): nothing was
        # read yet, so there is nothing to finish.
        signal.signal(signal.SIGTERM, stop_before_start)
        signal.signal(signal.SIGINT, stop_before_start)
        if options["metrics_port"]:
            # The bridge always runs, so it is the one to say how deep the Celery queues are.
            queues = celery_queue_names()
            REGISTRY.register(CeleryQueueLengths(lambda: celery_queue_lengths(app=app, queues=queues)))
            start_http_server(options["metrics_port"], addr=settings.BIND_ADDRESS)
        topics_ensure([options["topic"], options["dlq_topic"]], partitions=settings.TOPIC_PARTITIONS)
        bridge_options = BridgeOptions(
            topic=options["topic"],
            dlq_topic=options["dlq_topic"],
            batch_size=options["batch_size"],
            batch_timeout_s=settings.BATCH_TIMEOUT_MS / 1000,
            max_in_flight=settings.BRIDGE_MAX_IN_FLIGHT,
            redispatch_after_s=settings.BRIDGE_REDISPATCH_SECONDS,
            limits=Limits(
                max_bytes=settings.MAX_MESSAGE_BYTES,
                max_age_ms=settings.MAX_EVENT_AGE_DAYS * 86_400_000,
                max_skew_ms=settings.MAX_CLOCK_SKEW_S * 1000,
            ),
            dlq_max_ratio=settings.DLQ_MAX_RATIO,
            dlq_min_records=settings.DLQ_RATIO_MIN_RECORDS,
            instance_id=options["instance_id"],
            session_timeout_s=settings.KAFKA_SESSION_TIMEOUT_MS / 1000,
        )
        bridge: Bridge | None = None

        def on_error(error: KafkaError) -> None:
            # librdkafka's error_cb: a fatal one (fenced by a bridge with the same
            # group.instance.id) stops the bridge.
            if bridge is not None:
                bridge.on_kafka_error(error)

        def on_commit(error: KafkaError | None, partitions: list[TopicPartition]) -> None:
            if bridge is not None:
                bridge.on_commit(error, partitions)

        config = consumer_config(
            options["group_id"], instance_id=options["instance_id"], error_cb=on_error, on_commit=on_commit
        )
        consumer = Consumer(config)
        bridge = Bridge(options=bridge_options, consumer=consumer, dlq_producer=Producer(producer_config()))

        def stop(signum: int, frame: FrameType | None) -> None:
            logger.info("received %s: finishing the batches in flight, then stopping", signal.Signals(signum).name)
            assert bridge is not None
            bridge.shutdown = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        logger.info(
            "bridge: %s -> Celery (batch %d, group %s as %s, kafka %s)",
            bridge_options.topic,
            bridge_options.batch_size,
            options["group_id"],
            options["instance_id"] or "a dynamic member",
            settings.KAFKA_BOOTSTRAP_SERVERS,
        )
        reporter = StatusReporter(
            state=bridge.state,
            group_id=options["group_id"],
            topic=bridge_options.topic,
            interval_seconds=settings.BRIDGE_STATUS_SECONDS,
            client=redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2),
            probe=log_end_probe(),
            admin=AdminClient({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "log_level": 0}),
        )
        reporter.start()
        try:
            bridge.run()
        finally:
            reporter.stop()
        # A reason to stop is logged already: exit non-zero, so that a supervisor shows it.
        status = 0 if bridge.stopped_by is None else 1
        if status == 0:
            logger.info("bridge stopped")
        # Leave now. What must be finished is: offsets committed, dead letters confirmed
        # by Kafka, the status record taken away. The interpreter's own exit would collect
        # every object of Django, Celery and librdkafka first, 2-3 s on a busy machine
        # (py-spy: gc_collect_main) that a restart waits for, and it would wait for a
        # consumer close still pending on the group (bridge/consumer.py, `close_within`).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def stop_before_start(signum: int, frame: FrameType | None) -> None:
    logger.info("received %s before consuming: stopping", signal.Signals(signum).name)
    raise SystemExit(0)
