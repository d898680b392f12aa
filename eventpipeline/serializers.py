"""The shapes of /metrics and /health (they also document them in the OpenAPI schema)."""

from __future__ import annotations

from rest_framework import serializers

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
