"""Stored signals and the dead letters the pipeline refused."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib.postgres.indexes import BrinIndex
from django.db import models
from django.db.models.functions import Now
from django.utils import timezone

from signals_app.partitions import day_number, signals_partitions_ensure


class SignalType(models.TextChoices):
    LOGIN = "login"
    PURCHASE = "purchase"
    CLICK = "click"
    API_CALL = "api_call"
    FILE_ACCESS = "file_access"


class SignalQuerySet(models.QuerySet["Signal"]):
    def bulk_create(self, objs: Iterable[Signal], *args: Any, **kwargs: Any) -> list[Signal]:  # type: ignore[override]
        objs = list(objs)
        signals_partitions_ensure(days={day_number(signal.timestamp) for signal in objs})
        return list(super().bulk_create(objs, *args, **kwargs))  # type: ignore[arg-type]


class Signal(models.Model):
    """One user-behaviour event, stored exactly once.

    (`event_id`, `timestamp`) is the event's identity: the producer's `event_id` when it
    sent one, otherwise a UUID derived from the Kafka record's (topic, partition, offset),
    so a replay of the same record maps to the same row and is skipped. The event time is
    part of it because `signals` is partitioned by event time, and PostgreSQL enforces
    uniqueness only on keys that hold the partition key (docs/design.md, "Partitions").

    The table has a partition per day (signals_app/partitions.py); saving through the ORM
    creates a missing one first, like the store task does.
    """

    event_id = models.UUIDField()
    user_id = models.BigIntegerField()
    type = models.CharField(max_length=16, choices=SignalType.choices)
    timestamp = models.BigIntegerField(help_text="Event time, milliseconds since the epoch.")
    payload = models.JSONField(default=dict)
    # Set by PostgreSQL, so a COPY of the five event columns fills them.
    processed_at = models.DateTimeField(db_default=Now())
    created_at = models.DateTimeField(db_default=Now())

    objects = SignalQuerySet.as_manager()

    class Meta:
        db_table = "signals"
        # The old system's indexes less three (docs/performance.md, "Indexes"): user_id and
        # type alone are covered by the composites, whose leading column they are; the GIN
        # index on payload slowed every insert and no query here reads it.
        # In PostgreSQL the primary key is (timestamp, id), since a partitioned table's must
        # hold the partition key (migration 0002): it is also the index on event time that
        # lists read newest first. Django knows `id` alone, which is unique all the same
        # (one sequence); the BRIN index finds a row by it at almost no cost to inserts.
        constraints = [models.UniqueConstraint(fields=["event_id", "timestamp"], name="uniq_signals_event")]
        indexes = [
            models.Index(fields=["user_id", "timestamp"], name="idx_signals_user_time"),
            models.Index(fields=["type", "timestamp"], name="idx_signals_type_time"),
            BrinIndex(fields=["id"], name="idx_signals_id"),
        ]

    def __str__(self) -> str:
        return f"{self.type} by user {self.user_id} at {self.timestamp}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        signals_partitions_ensure(days=[day_number(self.timestamp)])
        super().save(*args, **kwargs)


class DeadLetter(models.Model):
    """A Kafka record the pipeline could not accept, kept whole so it can be replayed.

    One row per source record: (source_topic, source_partition, source_offset) is unique,
    so consuming the same record twice never makes a second dead letter.
    """

    raw = models.BinaryField()
    key = models.BinaryField(null=True, blank=True)
    source_topic = models.CharField(max_length=255)
    source_partition = models.IntegerField()
    source_offset = models.BigIntegerField()
    reason = models.TextField()
    received_at = models.DateTimeField(default=timezone.now)
    replayed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "dead_letters"
        constraints = [
            models.UniqueConstraint(
                fields=["source_topic", "source_partition", "source_offset"], name="uniq_dead_letter_source"
            )
        ]
        indexes = [models.Index(fields=["received_at"], name="idx_dead_letters_received")]

    def __str__(self) -> str:
        return f"{self.source_topic}[{self.source_partition}]@{self.source_offset}: {self.reason}"
