"""Anomalies raised by detection and triaged by analysts."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex, OpClass
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import F
from django.utils import timezone

from anomalies_app.rules import DEFAULT_RULES, UNUSUAL_TIME_ACTIVITY

RULE_CHOICES = [(anomaly_type, anomaly_type) for anomaly_type in DEFAULT_RULES]


class Severity(models.TextChoices):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class AnomalyStatus(models.TextChoices):
    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    FALSE_POSITIVE = "false_positive"


# Still to decide: an analyst's queue (docs/design.md, "Triage").
OPEN_STATUSES = (AnomalyStatus.NEW, AnomalyStatus.ACKNOWLEDGED)


class Rule(models.Model):
    """A detection rule as analysts tune it in the admin; workers re-read rules every few
    seconds (RULES_REFRESH_SECONDS), so a change needs no restart. How a rule compares its
    threshold (more than, or at least) is part of the rule's definition, not editable."""

    anomaly_type = models.CharField(max_length=64, unique=True, editable=False)
    enabled = models.BooleanField(default=True)
    threshold = models.FloatField(validators=[MinValueValidator(0)])
    window_seconds = models.PositiveIntegerField(help_text="0: the rule looks at one event at a time.")
    severity = models.CharField(max_length=8, choices=Severity.choices)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "anomaly_rules"
        ordering = ["anomaly_type"]

    def __str__(self) -> str:
        return self.anomaly_type

    def clean(self) -> None:
        if self.anomaly_type == UNUSUAL_TIME_ACTIVITY:
            if not (0 <= self.threshold < 24 and float(self.threshold).is_integer()):
                raise ValidationError({"threshold": "the first quiet hour, a whole hour from 0 to 23 (UTC)"})
            if not 0 < self.window_seconds <= 86_400:
                raise ValidationError({"window_seconds": "the quiet period's length, 1 to 86400 seconds"})


class Anomaly(models.Model):
    user_id = models.BigIntegerField()
    anomaly_type = models.CharField(max_length=64)
    severity = models.CharField(max_length=8, choices=Severity.choices)
    description = models.TextField()
    original_signal_data = models.JSONField(default=dict)
    detection_timestamp = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now)
    # Triage: filled in by analysts in the admin.
    status = models.CharField(max_length=16, choices=AnomalyStatus.choices, default=AnomalyStatus.NEW)
    assigned_to = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    triage_notes = models.TextField(blank=True, default="")
    triaged_at = models.DateTimeField(null=True, blank=True)
    triaged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Raised while a mute of its user and rule was on: recorded, so that the episode is
    # not raised again when the mute ends, but neither published nor shown by default.
    suppressed_by = models.ForeignKey(
        "Mute", null=True, blank=True, on_delete=models.SET_NULL, related_name="suppressed"
    )
    suppressed = models.BooleanField(default=False, db_default=False)
    # The episode, in event time (ms since the epoch): from the moment the condition began
    # to the last moment it was seen to hold. Keyed episodes (one purchase, one place, one
    # night) are recognised by `episode_key`, the others by overlapping spans.
    episode_key = models.CharField(max_length=255, blank=True, default="")
    episode_start_ms = models.BigIntegerField(default=0)
    episode_end_ms = models.BigIntegerField(default=0)
    # The rule as it was, the window at the episode's strongest moment, the count or
    # amount there, and the ids of the events that made it.
    evidence = models.JSONField(default=dict)
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "anomalies"
        verbose_name_plural = "anomalies"
        indexes = [
            models.Index(fields=["user_id"], name="idx_anomalies_user_id"),
            models.Index(fields=["anomaly_type"], name="idx_anomalies_type"),
            models.Index(fields=["severity"], name="idx_anomalies_severity"),
            models.Index(fields=["detection_timestamp"], name="idx_anomalies_detected"),
            models.Index(fields=["user_id", "detection_timestamp"], name="idx_anomalies_user_time"),
            models.Index(fields=["user_id", "anomaly_type", "episode_start_ms"], name="idx_anomalies_episode"),
            # The analysts' queue: the list filtered by status (and severity), newest first,
            # and its days (`date_hierarchy`) from the index alone (docs/performance.md,
            # "Triage at size").
            models.Index(
                fields=["status", "severity", "detection_timestamp"],
                name="idx_anomalies_triage_queue",
                condition=models.Q(suppressed=False),
            ),
            # The admin's search by event id: `evidence__event_ids__contains=[id]`.
            GinIndex(OpClass(F("evidence__event_ids"), name="jsonb_path_ops"), name="idx_anomalies_event_ids"),
        ]
        permissions = [("triage_anomaly", "Can triage anomalies (status, assignee, notes, mutes)")]

    def __str__(self) -> str:
        return f"{self.anomaly_type} ({self.severity}) for user {self.user_id}"


class UserLocation(models.Model):
    """A user's known places: where they have logged in from (successfully), with the first
    such login by event time, and places an analyst vouched for. The history
    unusual_location_login compares against, kept here so that losing Redis does not make
    every next login look new. A place added by hand has no login until one comes, and a
    login from it is never new (docs/design.md, "Mutes and known places")."""

    user_id = models.BigIntegerField()
    location = models.CharField(max_length=255)
    first_seen_ms = models.BigIntegerField(null=True, blank=True, editable=False)
    first_event_id = models.UUIDField(null=True, blank=True, editable=False)
    added_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    added_at = models.DateTimeField(null=True, blank=True, editable=False)
    note = models.TextField(blank=True, default="", db_default="")

    class Meta:
        db_table = "user_locations"
        verbose_name = "known place"
        constraints = [models.UniqueConstraint(fields=["user_id", "location"], name="uniq_user_location")]

    def __str__(self) -> str:
        return f"user {self.user_id} from {self.location}"

    @property
    def vouched(self) -> bool:
        return self.added_at is not None


class MuteQuerySet(models.QuerySet["Mute"]):
    def active(self, at: datetime | None = None) -> MuteQuerySet:
        return self.filter(ended_at__isnull=True, until__gt=at or timezone.now())


class Mute(models.Model):
    """No new anomalies of one rule for one user until `until`, because an analyst found
    them false positives (ElastAlert's silences, Sentry's "ignore until"). Detection reads
    mutes like rules, every RULES_REFRESH_SECONDS. Ended early by setting `ended_at`;
    never deleted, so what was muted, why and by whom stays known."""

    user_id = models.BigIntegerField()
    anomaly_type = models.CharField("rule", max_length=64, choices=RULE_CHOICES)
    until = models.DateTimeField()
    reason = models.TextField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    ended_at = models.DateTimeField(null=True, blank=True, editable=False)
    ended_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )

    objects = MuteQuerySet.as_manager()

    class Meta:
        db_table = "anomaly_mutes"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["user_id", "anomaly_type"], name="idx_mutes_user_rule"),
            models.Index(fields=["until"], name="idx_mutes_until", condition=models.Q(ended_at__isnull=True)),
        ]

    def __str__(self) -> str:
        return f"{self.anomaly_type} muted for user {self.user_id} until {self.until:%Y-%m-%d %H:%M} UTC"

    @property
    def active(self) -> bool:
        return self.ended_at is None and self.until > timezone.now()
