from __future__ import annotations

from rest_framework import serializers

from signals_app.models import Signal


class SignalSerializer(serializers.ModelSerializer):
    class Meta:
        model = Signal
        fields = ["id", "event_id", "user_id", "type", "timestamp", "payload", "processed_at", "created_at"]
