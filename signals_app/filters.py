"""Query parameters of the signal lists (DESIGN.md "Query API")."""

from __future__ import annotations

from typing import Any

from django import forms
from django_filters import rest_framework as filters

from eventpipeline.filters import BigIntegerFilter, FilterSet
from signals_app.models import Signal, SignalType


class _PeriodForm(forms.Form):
    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        start, end = cleaned.get("start_timestamp"), cleaned.get("end_timestamp")
        if start is not None and end is not None and end < start:
            self.add_error("end_timestamp", f"must not be before start_timestamp ({end} < {start})")
        return cleaned


class UserSignalFilter(FilterSet):
    """The filters of /users/{user_id}/signals: the user is in the path."""

    signal_type = filters.ChoiceFilter(field_name="type", choices=SignalType.choices, help_text="The signal's type.")
    start_timestamp = BigIntegerFilter(
        field_name="timestamp", lookup_expr="gte", help_text="Event time from (inclusive), ms since the epoch."
    )
    end_timestamp = BigIntegerFilter(
        field_name="timestamp", lookup_expr="lte", help_text="Event time up to (inclusive), ms since the epoch."
    )

    class Meta:
        model = Signal
        fields: list[str] = []
        form = _PeriodForm


class SignalFilter(UserSignalFilter):
    user_id = BigIntegerFilter(field_name="user_id", help_text="Only this user's signals.")
