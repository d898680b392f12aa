from __future__ import annotations

from typing import Any

from django.db.models import F
from rest_framework import serializers

from anomalies_app.models import Anomaly
from eventpipeline.serializers import ListRowSerializer


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
