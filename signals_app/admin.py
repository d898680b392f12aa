from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.db.models import QuerySet
from django.db.models.expressions import Combinable
from django.http import HttpRequest

from signals_app.models import DeadLetter, Signal
from signals_app.paging import CappedCountPaginator
from signals_app.selectors import search_term_parse
from signals_app.services import dead_letters_replay


class SignalChangeList(ChangeList):
    def get_ordering(self, request: HttpRequest, queryset: QuerySet[Any]) -> list[str | Combinable]:
        """By event time only, newest or oldest first: any other order (`?o=` can name
        every column) would read every daily partition of `signals`."""
        asked = [field for field in super().get_ordering(request, queryset) if isinstance(field, str)]
        first = next((field for field in asked if field.lstrip("-") == "timestamp"), "-timestamp")
        return [first, "-id" if first.startswith("-") else "id"]


@admin.register(Signal)
class SignalAdmin(admin.ModelAdmin):
    paginator = CappedCountPaginator  # counts no more than it shows
    list_display = ["id", "user_id", "type", "timestamp", "created_at"]
    # Newest event first, on the primary key (timestamp, id). Not by id alone: `signals` is
    # partitioned by event time and has no btree index on id, so that order would read
    # every partition (docs/design.md, "Partitions").
    ordering = ["-timestamp", "-id"]
    sortable_by = ["timestamp"]

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return SignalChangeList

    list_filter = ["type"]
    search_fields = ["=user_id", "=event_id"]
    search_help_text = "A user id, or an event id (a UUID)."
    # Ten million rows: no COUNT(*) for the paginator, no select of every user id, no
    # counts per filter choice.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    readonly_fields = ["event_id", "user_id", "type", "timestamp", "payload", "processed_at", "created_at"]

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Signal], bool]:
        """A user id or an event id, each on its index. (Django's own `=user_id` compares
        the column cast to text, which no index serves: a scan of every signal.)"""
        if not search_term.strip():
            return queryset, False
        term = search_term_parse(search_term)
        if isinstance(term, int):
            return queryset.filter(user_id=term), False
        if isinstance(term, uuid.UUID):
            return queryset.filter(event_id=term), False
        self.message_user(request, "Search takes a user id or an event id (a UUID).", messages.WARNING)
        return queryset.none(), False


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
