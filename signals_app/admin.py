from __future__ import annotations

from django.contrib import admin

from signals_app.models import DeadLetter, Signal


@admin.register(Signal)
class SignalAdmin(admin.ModelAdmin):
    list_display = ["id", "user_id", "type", "timestamp", "created_at"]
    list_filter = ["type"]
    search_fields = ["=user_id", "=event_id"]
    # Ten million rows: no COUNT(*) for the paginator, no select of every user id.
    show_full_result_count = False
    readonly_fields = ["event_id", "user_id", "type", "timestamp", "payload", "processed_at", "created_at"]


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ["id", "source_topic", "source_partition", "source_offset", "reason", "received_at", "replayed_at"]
    list_filter = ["source_topic", "replayed_at"]
    search_fields = ["reason"]
    readonly_fields = ["raw_text", "key", "source_topic", "source_partition", "source_offset", "reason", "received_at"]
    exclude = ["raw"]

    @admin.display(description="raw message")
    def raw_text(self, dead_letter: DeadLetter) -> str:
        return bytes(dead_letter.raw).decode("utf-8", errors="backslashreplace")
