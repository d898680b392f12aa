from __future__ import annotations

from typing import Any

from rest_framework import serializers

from eventpipeline.serializers import ListRowSerializer
from signals_app.models import Signal

# Far above what one emitter process reaches on the machines this runs on (tens of
# thousands a second); a higher number is a typo.
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
