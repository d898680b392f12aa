"""`manage.py create_topics`: create the signal, dead-letter and anomaly topics if missing."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from eventpipeline.kafka import topics_ensure


class Command(BaseCommand):
    help = "Create SIGNALS_TOPIC, DLQ_TOPIC and ANOMALIES_TOPIC on Kafka if they do not exist."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--partitions", type=int, default=settings.TOPIC_PARTITIONS)

    def handle(self, *args: Any, **options: Any) -> None:
        topics = [settings.SIGNALS_TOPIC, settings.DLQ_TOPIC, settings.ANOMALIES_TOPIC]
        created = topics_ensure(topics, partitions=options["partitions"])
        for topic in topics:
            state = "created" if topic in created else "exists"
            self.stdout.write(f"topic {topic}: {state}")
