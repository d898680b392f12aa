from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from anomalies_app.models import Anomaly, Rule
from anomalies_app.triage import KEEP, anomalies_triage
from signals_app.messages import ms_to_datetime


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
    list_display = ["id", "user_id", "anomaly_type", "severity", "description", "status", "detection_timestamp"]
    list_filter = ["status", "severity", "anomaly_type"]
    search_fields = ["=user_id", "description"]
    readonly_fields = [
        "user_id",
        "anomaly_type",
        "severity",
        "description",
        "episode",
        "evidence",
        "original_signal_data",
        "detection_timestamp",
        "published_at",
        "triaged_at",
    ]
    fields = [*readonly_fields, "status", "assigned_to", "triage_notes"]

    def save_model(self, request: HttpRequest, obj: Anomaly, form: Any, change: bool) -> None:
        data = form.cleaned_data
        anomalies_triage(
            anomaly_ids=[obj.pk],
            by=request.user,  # type: ignore[arg-type]
            status=data["status"] if "status" in form.changed_data else None,
            assigned_to=data["assigned_to"] if "assigned_to" in form.changed_data else KEEP,
            triage_notes=data["triage_notes"] if "triage_notes" in form.changed_data else None,
        )

    @admin.display(description="episode (event time, UTC)")
    def episode(self, anomaly: Anomaly) -> str:
        start, end = (
            ms_to_datetime(ms).isoformat(sep=" ", timespec="seconds")
            for ms in (anomaly.episode_start_ms, anomaly.episode_end_ms)
        )
        return start if start == end else f"{start} to {end}"
