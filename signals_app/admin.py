from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from signals_app.models import DeadLetter, Signal
from signals_app.services import dead_letters_replay


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
    actions = ["replay"]

    @admin.action(description="Replay onto the signals topic")
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        count = dead_letters_replay(dead_letters=queryset, topic=settings.SIGNALS_TOPIC)
        self.message_user(request, f"Replayed {count} dead letters onto {settings.SIGNALS_TOPIC}.", messages.SUCCESS)

    @admin.display(description="raw message")
    def raw_text(self, dead_letter: DeadLetter) -> str:
        return bytes(dead_letter.raw).decode("utf-8", errors="backslashreplace")
