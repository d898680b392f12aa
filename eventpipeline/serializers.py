"""The shapes of /metrics and /health (they also document them in the OpenAPI schema),
and the fast way the lists turn rows into JSON."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.db.models import Model
from rest_framework import serializers


def _plain(value: Any) -> Any:
    """A model field's value as DRF's own fields would give it for JSON."""
    if isinstance(value, datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


class ListRowSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """A read-only ModelSerializer that writes each row straight from its fields' values.
    DRF's per-field machinery (get_attribute, to_representation, timezone checks) took a
    third of the CPU of a 50-row page (cProfile on ten million rows); the output, and the
    schema the declared fields give, are the same. Only for plain model fields: a subclass
    names any other in `computed` and gives its value in `computed_value`."""

    computed: tuple[str, ...] = ()

    def to_representation(self, instance: Model) -> dict[str, Any]:
        return {
            name: self.computed_value(instance, name) if name in self.computed else _plain(getattr(instance, name))
            for name in self.Meta.fields
        }

    def computed_value(self, instance: Model, name: str) -> Any:
        raise NotImplementedError(name)


MAX_HOURS = 720


class MetricsQuerySerializer(serializers.Serializer):
    hours = serializers.IntegerField(
        min_value=1,
        max_value=MAX_HOURS,
        default=24,
        help_text=f"The period: this many hours up to now, 1 to {MAX_HOURS}.",
        error_messages={
            "min_value": f"must be from 1 to {MAX_HOURS}",
            "max_value": f"must be from 1 to {MAX_HOURS}",
            "invalid": "must be a whole number of hours",
        },
    )


class _SignalTotals(serializers.Serializer):
    total = serializers.IntegerField()
    per_second = serializers.FloatField(help_text="Average over the period.")
    by_type = serializers.DictField(child=serializers.IntegerField())


class _AnomalyTotals(serializers.Serializer):
    total = serializers.IntegerField()
    per_hour = serializers.FloatField(help_text="Average over the period.")
    per_1000_signals = serializers.FloatField(allow_null=True, help_text="Null when the period has no signal.")
    by_type = serializers.DictField(child=serializers.IntegerField())
    by_severity = serializers.DictField(child=serializers.IntegerField())
    by_status = serializers.DictField(child=serializers.IntegerField())


class _DeadLetterTotals(serializers.Serializer):
    total = serializers.IntegerField()
    per_hour = serializers.FloatField()


class _Hour(serializers.Serializer):
    hour = serializers.DateTimeField(help_text="The start of the clock hour (UTC).")
    signals = serializers.IntegerField()
    anomalies = serializers.IntegerField()
    dead_letters = serializers.IntegerField()


class _UserSignals(serializers.Serializer):
    user_id = serializers.IntegerField()
    signals = serializers.IntegerField()


class _UserAnomalies(serializers.Serializer):
    user_id = serializers.IntegerField()
    anomalies = serializers.IntegerField()


class _TopUsers(serializers.Serializer):
    by_signals = _UserSignals(many=True)
    by_anomalies = _UserAnomalies(many=True)


class MetricsSerializer(serializers.Serializer):
    """Signals by event time, anomalies by detection time, dead letters by the time received."""

    hours = serializers.IntegerField()
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    signals = _SignalTotals()
    anomalies = _AnomalyTotals()
    dead_letters = _DeadLetterTotals()
    by_hour = _Hour(many=True, help_text="Every clock hour the period touches, oldest first.")
    top_users = _TopUsers()


class _Check(serializers.Serializer):
    ok = serializers.BooleanField()
    detail = serializers.CharField()


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "unavailable"])
    failed = serializers.ListField(child=serializers.CharField(), help_text="The checks that failed.")
    checks = serializers.DictField(child=_Check(), help_text="postgresql, redis, kafka and celery (a worker's ping).")
