from __future__ import annotations

from django.contrib import admin

from anomalies_app.models import Anomaly


@admin.register(Anomaly)
class AnomalyAdmin(admin.ModelAdmin):
    list_display = ["id", "user_id", "anomaly_type", "severity", "status", "detection_timestamp"]
    list_filter = ["status", "severity", "anomaly_type"]
    search_fields = ["=user_id", "description"]
    readonly_fields = ["user_id", "anomaly_type", "severity", "description", "original_signal_data"]
