"""Stored signals and the dead letters the pipeline refused."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now
from django.utils import timezone


class SignalType(models.TextChoices):
    LOGIN = "login"
    PURCHASE = "purchase"
    CLICK = "click"
    API_CALL = "api_call"
    FILE_ACCESS = "file_access"


class Signal(models.Model):
    """One user-behaviour event, stored exactly once.

    `event_id` is the event's identity: the producer's `event_id` when it sent one,
    otherwise a UUID derived from the Kafka record's (topic, partition, offset), so a
    replay of the same record maps to the same row and is skipped.
    """

    event_id = models.UUIDField(unique=True)
    user_id = models.BigIntegerField()
    type = models.CharField(max_length=16, choices=SignalType.choices)
    timestamp = models.BigIntegerField(help_text="Event time, milliseconds since the epoch.")
    payload = models.JSONField(default=dict)
    # Set by PostgreSQL, so a COPY of the five event columns fills them.
    processed_at = models.DateTimeField(db_default=Now())
    created_at = models.DateTimeField(db_default=Now())

    class Meta:
        db_table = "signals"
        # The old system's indexes less three (docs/performance.md, "Indexes"): user_id and
        # type alone are covered by the composites, whose leading column they are; the GIN
        # index on payload slowed every insert and no query here reads it.
        indexes = [
            models.Index(fields=["timestamp"], name="idx_signals_timestamp"),
            models.Index(fields=["user_id", "timestamp"], name="idx_signals_user_time"),
            models.Index(fields=["type", "timestamp"], name="idx_signals_type_time"),
        ]

    def __str__(self) -> str:
        return f"{self.type} by user {self.user_id} at {self.timestamp}"


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
