"""The shapes of every response and request body (they also document them in the OpenAPI
schema), and the fast way the lists turn rows into JSON."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist
from django.db.models import F, JSONField, Model, QuerySet, TextField
from django.db.models.functions import Cast
from rest_framework import serializers
from rest_framework.fields import empty

from anomalies_app.models import Anomaly, AnomalyStatus, Mute, UserLocation
from anomalies_app.triage import MUTE_MAX_DAYS
from api.filters import BIGINT_MIN
from signals_app.messages import BIGINT_MAX
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


# The periods /metrics reports on, each computed at most once per METRICS_CACHE_SECONDS:
# a few, so that a client asking for every number of hours in turn cannot make PostgreSQL
# count a month of signals hundreds of times per cache period.
METRICS_HOURS = (1, 2, 3, 6, 12, 24, 48, 72, 168, 336, 720)
_METRICS_HOURS_TEXT = ", ".join(map(str, METRICS_HOURS))


class MetricsQuerySerializer(serializers.Serializer):
    hours = serializers.ChoiceField(
        choices=METRICS_HOURS,
        default=24,
        help_text=f"The period: this many hours up to now, one of {_METRICS_HOURS_TEXT}.",
        error_messages={"invalid_choice": f"must be one of {_METRICS_HOURS_TEXT}"},
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


MAX_BURST_SECONDS = 86_400
MAX_BURST_MULTIPLIER = 100


class SignalSerializer(ListRowSerializer):
    class Meta:
        model = Signal
        fields = ["id", "event_id", "user_id", "type", "timestamp", "payload", "processed_at", "created_at"]


class _NoUnknownFields(serializers.Serializer):
    """A misspelt field is a 400 naming it, not a request that silently does nothing. It
    is named with the other bad fields, if any."""

    # Fields the answer shows but a request may not change.
    read_only_names: tuple[str, ...] = ()

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        unknown = {
            name: ["is read-only" if name in self.read_only_names else "is not a field of this request"]
            for name in sorted(set(data) - set(self.fields) if isinstance(data, Mapping) else ())
        }
        try:
            attrs: dict[str, Any] = super().to_internal_value(data)
        except serializers.ValidationError as error:
            if unknown and isinstance(error.detail, dict):
                raise serializers.ValidationError({**error.detail, **unknown}) from error
            raise
        if unknown:
            raise serializers.ValidationError(unknown)
        return attrs


class EmitterConfigureSerializer(_NoUnknownFields):
    signals_per_second = serializers.FloatField(
        required=False,
        min_value=0.001,
        help_text="The base rate, events per second; with burst mode, at most EMITTER_MAX_RATE.",
        error_messages={
            "min_value": "must be more than 0",
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
        help_text="Times the emitter's rate, for the duration; the product at most EMITTER_MAX_RATE.",
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
        slug_field="username", read_only=True, allow_null=True, help_text="The analyst's username."
    )
    triaged_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True, help_text="Who made the latest triage decision."
    )

    # The analysts' usernames.
    computed = {"assigned_to": F("assigned_to__username"), "triaged_by": F("triaged_by__username")}

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
            "triaged_by",
            "suppressed",
        ]
        extra_kwargs = {"suppressed": {"help_text": "Recorded while a mute of its user and rule was on: not raised."}}


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


class WholeNumberField(serializers.IntegerField):
    """A JSON integer: `"12"`, `12.5`, `12.0` and `true` are refused, as no id is written so."""

    default_error_messages = {
        "invalid": "must be a whole number",
        "max_value": "must be at most {max_value}",
        "min_value": "must be at least {min_value}",
    }

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", BIGINT_MIN)
        kwargs.setdefault("max_value", BIGINT_MAX)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return int(super().to_internal_value(data))


class _AnalystField(WholeNumberField):
    """A user, by id: who an anomaly is assigned to."""

    def run_validation(self, data: Any = empty) -> Any:
        user_id = super().run_validation(data)  # the number checked, validators included
        if user_id is None:
            return None
        user = get_user_model().objects.filter(pk=user_id).first()
        if user is None:
            raise serializers.ValidationError(f"no user has the id {user_id}")
        return user


def _text_field(**kwargs: Any) -> serializers.CharField:
    """Free text as written (blank allowed, no trimming), that PostgreSQL can store: DRF
    already refuses NUL; a lone surrogate (`"\\ud800"` in JSON) is refused too."""
    return serializers.CharField(
        required=False, allow_blank=True, trim_whitespace=False, validators=[_encodable], **kwargs
    )


def _encodable(text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError as error:
        raise serializers.ValidationError("must be text that UTF-8 can encode (no lone surrogates)") from error


class AnomalyTriageSerializer(_NoUnknownFields):
    """A triage decision: give at least one field. Each is checked by the triage service
    (docs/design.md, "Triage")."""

    read_only_names = tuple(AnomalySerializer.Meta.fields)

    status = serializers.ChoiceField(
        choices=AnomalyStatus.choices,
        required=False,
        help_text="Where it goes: new → acknowledged, resolved or false_positive; acknowledged → resolved or "
        "false_positive; resolved or false_positive → acknowledged (reopened). Nothing goes back to new.",
        error_messages={"invalid_choice": f"must be one of {', '.join(AnomalyStatus.values)}; got {{input!r}}"},
    )
    assigned_to = _AnalystField(
        required=False,
        allow_null=True,
        help_text="The id of a user who may triage, or null to unassign; only open (new or acknowledged) "
        "anomalies can be assigned. Left out: an anomaly nobody was assigned to becomes yours when its "
        "status changes.",
    )
    triage_notes = _text_field(help_text="Replaces the notes.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs.keys() & {"status", "assigned_to", "triage_notes"}:
            raise serializers.ValidationError("give status, assigned_to, triage_notes or several of them")
        return attrs


MAX_TRIAGE_IDS = 1000


class _IdList(serializers.ListField):
    """A list whose bad items are named by their place in it, as plain messages like
    every other field's (DRF keys them by index in an object)."""

    def run_child_validation(self, data: list[Any]) -> list[Any]:
        try:
            return super().run_child_validation(data)  # type: ignore[no-any-return]
        except serializers.ValidationError as error:
            if not isinstance(error.detail, dict):
                raise
            raise serializers.ValidationError(
                [f"item {index}: {message}" for index, messages in error.detail.items() for message in messages]
            ) from error


class AnomaliesTriageSerializer(AnomalyTriageSerializer):
    """One decision for many anomalies, each taken on its own merits."""

    ids = _IdList(
        child=WholeNumberField(),
        allow_empty=False,
        min_length=1,
        max_length=MAX_TRIAGE_IDS,
        help_text=f"The anomalies' ids, at most {MAX_TRIAGE_IDS}; an id given twice counts once.",
        error_messages={
            "empty": "give at least one anomaly id",
            "min_length": "give at least one anomaly id",
            "max_length": f"at most {MAX_TRIAGE_IDS} ids at once; send the rest in another request",
            "not_a_list": "must be a list of anomaly ids",
        },
    )
    mute_days = WholeNumberField(
        required=False,
        min_value=1,
        max_value=MUTE_MAX_DAYS,
        error_messages={
            "min_value": f"a mute lasts 1 to {MUTE_MAX_DAYS} days",
            "max_value": f"a mute lasts 1 to {MUTE_MAX_DAYS} days",
        },
        help_text=f"With status false_positive: mute the rule for each user concerned, 1 to {MUTE_MAX_DAYS} days.",
    )
    mute_reason = _text_field(help_text="Why the rule is muted; needed with mute_days.")
    add_known_place = serializers.BooleanField(
        required=False,
        help_text="With status false_positive: the place of each unusual_location_login becomes one of its "
        "user's known places.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = dict(attrs)
        ids = list(dict.fromkeys(attrs.pop("ids")))
        super().validate(attrs)
        if "mute_reason" in attrs and "mute_days" not in attrs:
            raise serializers.ValidationError({"mute_reason": ["comes with mute_days"]})
        return {"ids": ids, **attrs}


class _Changed(serializers.Serializer):
    id = serializers.IntegerField()
    change = serializers.CharField(help_text="What changed: the line written in the anomaly's history.")


class _Refused(serializers.Serializer):
    id = serializers.IntegerField()
    field = serializers.CharField(
        help_text="What it was refused on: id (no such anomaly), status, assigned_to or triage_notes "
        "(nothing to change)."
    )
    reason = serializers.CharField()


class _Mute(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = Mute
        fields = ["id", "user_id", "anomaly_type", "until", "reason"]


class _KnownPlace(serializers.ModelSerializer):  # type: ignore[type-arg]
    class Meta:
        model = UserLocation
        fields = ["id", "user_id", "location"]


class TriageResultSerializer(serializers.Serializer):
    """What a bulk decision did: every id given is in `changed` or in `refused`."""

    changed = _Changed(many=True)
    refused = _Refused(many=True)
    mutes = _Mute(many=True, help_text="The mutes added (mute_days).")
    known_places = _KnownPlace(many=True, help_text="The places added to their users' known places.")
    summary = serializers.CharField(help_text="The same in a sentence, as the admin says it.")
