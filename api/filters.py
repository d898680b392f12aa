"""Query parameters of the list endpoints: whole-number filters, strict ordering, the user id in
a path, and the filters of the signal and anomaly lists (docs/design.md, "Query API"). Each bad
value is refused with 400 naming the parameter, never passed on to PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django import forms
from django.db.models import QuerySet
from django_filters import rest_framework as filters
from django_filters.filters import BooleanFilter
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.filters import OrderingFilter
from rest_framework.request import Request

from anomalies_app.models import Anomaly, AnomalyStatus, Severity
from anomalies_app.rules import DEFAULT_RULES
from signals_app.messages import BIGINT_MAX
from signals_app.models import Signal, SignalType

if TYPE_CHECKING:
    from django.utils.functional import _StrPromise as StrPromise

BIGINT_MIN = -(2**63)
_WHOLE_NUMBER: dict[str, str | StrPromise] = {
    "invalid": "must be a whole number",
    "min_value": f"must be at least {BIGINT_MIN}",
    "max_value": f"must be at most {BIGINT_MAX}",
}


class FilterSet(filters.FilterSet):
    """django-filter's FilterSet, with its form class made once per filter set. django-filter
    makes a new form class on every request (a type() and a deep copy of every filter's
    field), CPU spent on every list request (docs/performance.md, "Filters"). The form
    depends only on the declared filters, none of which depends on the request here."""

    def get_form_class(self) -> type[forms.Form]:
        made = type(self).__dict__.get("_form_class")  # this class's own, not a parent's
        if made is None:
            made = super().get_form_class()
            type(self)._form_class = made
        return made  # type: ignore[no-any-return]

    @classmethod
    def defaults_apply(cls, queryset: QuerySet[Any]) -> QuerySet[Any]:
        """`queryset` as the filters leave it when the request names none of them: only
        the filters with a default (StrictBooleanFilter) do anything."""
        for filter_ in cls.base_filters.values():
            if isinstance(filter_, StrictBooleanFilter):
                queryset = filter_.filter(queryset, None)
        return queryset


class FilterBackend(filters.DjangoFilterBackend):
    """django-filter's backend, which leaves a request that names none of the filters
    alone, sparing the CPU of making and validating the filter set and its form for no
    filter at all (docs/performance.md, "Filters"): with no filter parameter the form has
    nothing to refuse and the filter set nothing to apply but its defaults. (A parameter is
    taken as a filter's when it starts with the filter's name, so a widget's
    `<name>_min`-style parameters count too.)"""

    def filter_queryset(self, request: Request, queryset: QuerySet[Any], view: Any) -> QuerySet[Any]:
        filterset_class = self.get_filterset_class(view, queryset)
        if filterset_class is not None and not any(
            parameter.startswith(name) for parameter in request.query_params for name in filterset_class.base_filters
        ):
            return filterset_class.defaults_apply(queryset)  # type: ignore[no-any-return]
        return super().filter_queryset(request, queryset, view)  # type: ignore[no-any-return]


class BigIntegerFilter(filters.NumberFilter):
    """A whole number that fits PostgreSQL's bigint ("1.5", "abc" and 2**63 are 400s)."""

    field_class = forms.IntegerField

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", BIGINT_MIN)
        kwargs.setdefault("max_value", BIGINT_MAX)
        kwargs.setdefault("error_messages", _WHOLE_NUMBER)
        super().__init__(*args, **kwargs)


class StrictBooleanField(forms.Field):
    """`true` or `false`; anything else is refused, where django-filter's boolean fields
    take a value they do not know for no value at all (`suppressed=yes` would quietly
    show the default)."""

    widget = forms.Select(choices=[("", "default"), ("true", "true"), ("false", "false")])

    def to_python(self, value: Any) -> bool | None:
        if value in self.empty_values:
            return None
        if value in ("true", "false"):
            return bool(value == "true")
        raise forms.ValidationError("must be true or false", code="invalid")


class StrictBooleanFilter(BooleanFilter):
    """A boolean filter with a default that applies when the parameter is not given. (Not
    django-filter's REST framework BooleanFilter: its widget reads a value it does not
    know as no value.)"""

    field_class = StrictBooleanField

    def __init__(self, *args: Any, default: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default = default

    def filter(self, qs: QuerySet[Any], value: bool | None) -> QuerySet[Any]:
        return super().filter(qs, self.default if value is None else value)  # type: ignore[no-any-return]


_WHOLE_NUMBER_FIELD = serializers.IntegerField(min_value=BIGINT_MIN, max_value=BIGINT_MAX, error_messages=_WHOLE_NUMBER)


def whole_number_from_path(name: str, raw: str) -> int:
    """An id in a path (`{user_id}`, an anomaly's `{id}`). The URL takes any text so that a
    bad id is a 400 naming the parameter, as in a query string, rather than a bare 404."""
    try:
        return int(_WHOLE_NUMBER_FIELD.run_validation(raw))
    except serializers.ValidationError as error:
        raise ValidationError({name: error.detail}) from error


def user_id_from_path(raw: str) -> int:
    """The `{user_id}` of a /users/ path."""
    return whole_number_from_path("user_id", raw)


class StrictOrderingFilter(OrderingFilter):
    """`?ordering=` on one whitelisted field, ascending or with `-` descending.

    DRF's OrderingFilter drops unknown fields silently; here they are a 400, like every
    other bad parameter. The row id always follows as the tie-breaker, in the same
    direction, so that an order is total: page and cursor pagination need that to give
    each row exactly once.
    """

    def get_ordering(self, request: Request, queryset: QuerySet[Any], view: Any) -> Sequence[str]:
        requested = request.query_params.get(self.ordering_param)
        if requested is None or requested == "":
            requested = view.ordering
        choices = self.choices(view)
        if requested not in choices:
            raise ValidationError({self.ordering_param: [f"must be one of {', '.join(choices)}; got {requested!r}"]})
        field = requested.removeprefix("-")
        if field == "id":
            return (requested,)
        return (requested, "-id" if requested.startswith("-") else "id")

    @staticmethod
    def choices(view: Any) -> list[str]:
        return [term for field in view.ordering_fields for term in (field, f"-{field}")]

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": self.ordering_param,
                "required": False,
                "in": "query",
                "description": f"Sort on one field, `-` for descending (default `{view.ordering}`); "
                "ties are broken by id.",
                "schema": {"type": "string", "enum": self.choices(view)},
            }
        ]


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


class UserAnomalyFilter(FilterSet):
    """The filters of /users/{user_id}/anomalies: the user is in the path."""

    severity = filters.ChoiceFilter(choices=Severity.choices, help_text="The anomaly's severity.")
    anomaly_type = filters.ChoiceFilter(
        choices=[(anomaly_type, anomaly_type) for anomaly_type in DEFAULT_RULES], help_text="The rule that raised it."
    )
    status = filters.ChoiceFilter(choices=AnomalyStatus.choices, help_text="Where triage has got to.")
    suppressed = StrictBooleanFilter(
        default=False,
        help_text="false (the default): leave out the anomalies recorded while a mute of their user and rule "
        "was on; true: only those.",
    )

    class Meta:
        model = Anomaly
        fields: list[str] = []


class AnomalyFilter(UserAnomalyFilter):
    user_id = BigIntegerFilter(field_name="user_id", help_text="Only this user's anomalies.")
