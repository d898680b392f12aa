"""The shapes of every response and request body (they also document them in the OpenAPI
schema), and the fast way the lists turn rows into JSON."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from django.core.exceptions import FieldDoesNotExist
from django.db.models import F, JSONField, Model, QuerySet, TextField
from django.db.models.functions import Cast
from rest_framework import serializers

from anomalies_app.models import Anomaly
from signals_app.models import Signal


def _plain(value: Any) -> Any:
    """A model field's value as DRF's own fields would give it for JSON."""
    if isinstance(value, datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _plain_tree(value: Any) -> Any:
    """`value` with `_plain` applied to everything in its dicts and lists."""
    if isinstance(value, Mapping):
        return {key: _plain_tree(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_tree(item) for item in value]
    return _plain(value)


class ListRowSerializer(serializers.ModelSerializer):  # type: ignore[type-arg]
    """A read-only ModelSerializer for the list endpoints, whose rows are plain dicts of
    column values (`rows`, QuerySet.values) written straight to JSON.

    Rows skip DRF's per-field machinery (get_attribute, to_representation, timezone
    checks) and model instances (from_db, two signals per instance): work paid on every
    row of every page that the output does not need (docs/performance.md, "List rows").
    The output, and the schema the declared fields give, are the same as DRF's. A field
    that is not a column of the model (a related user's name) is named in `computed` with
    the expression that reads it."""

    computed: dict[str, Any] = {}
    _shape: _RowShape

    @classmethod
    def rows(cls, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """`queryset` as the dicts `to_representation` takes. JSON columns come as their
        text, which goes into the response as it is (orjson.Fragment), rather than parsed
        into Python objects only to be written out again (docs/performance.md, "List rows")."""
        shape = cls._row_shape()
        return queryset.values(*shape.columns, **shape.expressions)

    def to_representation(self, instance: Mapping[str, Any]) -> dict[str, Any]:
        return {
            name: (orjson.Fragment(instance[key]) if instance[key] is not None else None)
            if is_json
            else _plain(instance[key])
            for name, key, is_json in self._row_shape().keys
        }

    @classmethod
    def _row_shape(cls) -> _RowShape:
        # Worked out once per class (a Django expression is copied by each query it joins).
        shape: _RowShape | None = cls.__dict__.get("_shape")
        if shape is None:
            shape = _RowShape(columns=[], expressions={}, keys=[])
            for name in cls.Meta.fields:
                is_json = name not in cls.computed and isinstance(_field(cls.Meta.model, name), JSONField)
                if name in cls.computed:
                    shape.expressions[_computed_key(name)] = cls.computed[name]
                elif is_json:
                    shape.expressions[_computed_key(name)] = Cast(name, TextField())
                else:
                    shape.columns.append(name)
                shape.keys.append((name, name if name in shape.columns else _computed_key(name), is_json))
            cls._shape = shape
        return shape


@dataclass(frozen=True)
class _RowShape:
    columns: list[str]  # read as they are
    expressions: dict[str, Any]  # key in the row: expression (computed fields, JSON as text)
    keys: list[tuple[str, str, bool]]  # output name, key in the row, JSON text?


def _field(model: type[Model], name: str) -> Any:
    try:
        return model._meta.get_field(name)
    except FieldDoesNotExist:
        return None


def _computed_key(name: str) -> str:
    # values() refuses an expression named like one of the model's fields.
    return f"{name}_computed"


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

    def to_representation(self, instance: Mapping[str, Any]) -> dict[str, Any]:
        """The report as DRF's fields would write it, written directly: it is plain data
        but for its datetimes, and DRF's nested serializers were most of the CPU of serving
        a cached report (docs/performance.md, "The /metrics report"). The fields above are
        its schema."""
        return _plain_tree(instance)  # type: ignore[no-any-return]


class _Check(serializers.Serializer):
    ok = serializers.BooleanField()
    detail = serializers.CharField()


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "unavailable"])
    failed = serializers.ListField(child=serializers.CharField(), help_text="The checks that failed.")
    checks = serializers.DictField(child=_Check(), help_text="postgresql, redis, kafka and celery (a worker's ping).")


# Far above what one emitter process reaches, so a higher number is a typo
# (docs/performance.md, "Emitter latency sampling").
MAX_SIGNALS_PER_SECOND = 1_000_000
MAX_BURST_SECONDS = 86_400
MAX_BURST_MULTIPLIER = 100


class SignalSerializer(ListRowSerializer):
    class Meta:
        model = Signal
        fields = ["id", "event_id", "user_id", "type", "timestamp", "payload", "processed_at", "created_at"]


class _NoUnknownFields(serializers.Serializer):
    """A misspelt field is a 400 naming it, not a request that silently does nothing."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["is not a field of this request"] for name in unknown})
        return attrs


class EmitterConfigureSerializer(_NoUnknownFields):
    signals_per_second = serializers.FloatField(
        required=False,
        min_value=0.001,
        max_value=MAX_SIGNALS_PER_SECOND,
        help_text="The base rate, events per second.",
        error_messages={
            "min_value": "must be more than 0",
            "max_value": f"must be at most {MAX_SIGNALS_PER_SECOND:,}",
            "invalid": "must be a number",
        },
    )
    burst_mode = serializers.BooleanField(
        required=False, help_text="Emit the emitter's burst multiplier (5 unless started otherwise) times the rate."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if not attrs:
            raise serializers.ValidationError("give signals_per_second, burst_mode or both")
        return attrs


class EmitterBurstSerializer(_NoUnknownFields):
    duration_seconds = serializers.FloatField(
        min_value=1,
        max_value=MAX_BURST_SECONDS,
        error_messages={
            "min_value": "must be at least 1",
            "max_value": f"must be at most {MAX_BURST_SECONDS} (a day)",
            "invalid": "must be a number",
        },
    )
    multiplier = serializers.FloatField(
        min_value=1,
        max_value=MAX_BURST_MULTIPLIER,
        help_text="Times the emitter's rate, for the duration.",
        error_messages={
            "min_value": "must be at least 1",
            "max_value": f"must be at most {MAX_BURST_MULTIPLIER}",
            "invalid": "must be a number",
        },
    )


class _Burst(serializers.Serializer):
    multiplier = serializers.FloatField()
    until = serializers.DateTimeField()


class EmitterControlSerializer(serializers.Serializer):
    """What the running emitters were asked; null where nothing was (each keeps its own)."""

    version = serializers.IntegerField(help_text="Grows with every request.")
    signals_per_second = serializers.FloatField(allow_null=True)
    burst_mode = serializers.BooleanField(allow_null=True)
    burst = _Burst(allow_null=True, help_text="The timed burst in progress, if any.")
    follows_within_seconds = serializers.FloatField(help_text="Running emitters read the control this often.")


class AnomalySerializer(ListRowSerializer):
    assigned_to: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )

    computed = {"assigned_to": F("assigned_to__username")}  # the analyst's username

    class Meta:
        model = Anomaly
        fields = [
            "id",
            "user_id",
            "anomaly_type",
            "severity",
            "description",
            "original_signal_data",
            "evidence",
            "episode_start_ms",
            "episode_end_ms",
            "detection_timestamp",
            "created_at",
            "status",
            "assigned_to",
            "triage_notes",
            "triaged_at",
        ]


class RiskScoreSerializer(serializers.Serializer):
    """The row of `get_user_risk_score(user_id)`: the last 30 days, false positives left out."""

    user_id = serializers.IntegerField()
    total_signals = serializers.IntegerField()
    total_anomalies = serializers.IntegerField()
    high_severity = serializers.IntegerField()
    medium_severity = serializers.IntegerField()
    low_severity = serializers.IntegerField()
    risk_score = serializers.IntegerField(min_value=0, max_value=100)
    risk_level = serializers.ChoiceField(choices=["low", "medium", "high"])
