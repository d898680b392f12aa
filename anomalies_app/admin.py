from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from anomalies_app.models import Anomaly, Rule


@admin.register(Rule)
class RuleAdmin(admin.ModelAdmin):
    list_display = ["anomaly_type", "enabled", "threshold", "window_seconds", "severity", "updated_at"]
    list_editable = ["enabled", "threshold", "window_seconds", "severity"]
    readonly_fields = ["anomaly_type", "updated_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the rules are the seven of the design; they are tuned, not invented

    def has_delete_permission(self, request: HttpRequest, obj: Rule | None = None) -> bool:
        return False


@admin.register(Anomaly)
class AnomalyAdmin(admin.ModelAdmin):
    list_display = ["id", "user_id", "anomaly_type", "severity", "status", "detection_timestamp"]
    list_filter = ["status", "severity", "anomaly_type"]
    search_fields = ["=user_id", "description"]
    readonly_fields = ["user_id", "anomaly_type", "severity", "description", "original_signal_data"]
