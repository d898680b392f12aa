"""Pagination of the list endpoints: page numbers as in the system this replaces, and
cursors for deep paging. Neither ever counts the rows.

Page mode (`?page=3&size=50`, the default): OFFSET (page - 1) * size, LIMIT size + 1. The
extra row only tells whether a next page exists, and the response carries no total: no
`count(*)` is run, since counting a large table is slow and would be paid on every
request (docs/performance.md, "The /metrics report").
Deep pages still make PostgreSQL walk past every row before them, so `page` x `size` is
capped at MAX_PAGE_ROWS (a 400 naming `page` beyond it): no request makes it skip more
than that. Cursors are for deep paging.

Cursor mode (`?cursor=` to start, then the `next` link): keyset pagination on the
ordering field and the row id, `WHERE (timestamp, id) < (last seen)`, which an index
serves at the same cost on the first page and the millionth. A cursor is signed with
SECRET_KEY, so one that was altered or made up is refused (400) instead of trusted;
it holds the ordering it was made for and stops working if the ordering changes.

Both modes answer `{"next": <url or null>, "previous": <url or null>, "results": [...]}`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core import signing
from django.core.exceptions import ImproperlyConfigured
from django.db.models import Model, Q, QuerySet
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

DEFAULT_SIZE = 50
MAX_SIZE = 1000
# The deepest row page mode reaches (page x size): what one request may make PostgreSQL
# step over is bounded. Anyone reading further pages with `cursor`.
MAX_PAGE_ROWS = 10_000
_CURSOR_SALT = "api.pagination.cursor"

_SIZE = serializers.IntegerField(
    min_value=1,
    max_value=MAX_SIZE,
    error_messages={
        "min_value": "must be at least 1",
        "max_value": f"is capped at {MAX_SIZE}: ask for {MAX_SIZE} or fewer rows per page",
        "invalid": "must be a whole number",
    },
)
_PAGE = serializers.IntegerField(
    min_value=1,
    error_messages={"min_value": "must be at least 1 (the first page is 1)", "invalid": "must be a whole number"},
)


def _parameter(request: Request, name: str, field: serializers.IntegerField, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(field.run_validation(raw))
    except serializers.ValidationError as error:
        raise ValidationError({name: error.detail}) from error


@dataclass(frozen=True)
class _Position:
    """Where a cursor page starts: after (or, going back, before) the row whose ordering
    key is `key`, for the ordering `ordering` (e.g. ("-timestamp", "-id"))."""

    ordering: tuple[str, ...]
    key: tuple[Any, ...]
    backwards: bool


class PageOrCursorPagination(BasePagination):
    page_query_param = "page"
    size_query_param = "size"
    cursor_query_param = "cursor"

    def paginate_queryset(
        self, queryset: QuerySet[Any] | Sequence[Any], request: Request, view: Any = None
    ) -> list[Any]:
        if not isinstance(queryset, QuerySet):
            raise ImproperlyConfigured("PageOrCursorPagination pages querysets only")
        self.request = request
        self.size = _parameter(request, self.size_query_param, _SIZE, DEFAULT_SIZE)
        cursor = request.query_params.get(self.cursor_query_param)
        if cursor is None:
            return self._page(queryset, request)
        if self.page_query_param in request.query_params:
            raise ValidationError({self.cursor_query_param: ["use either `page` or `cursor`, not both"]})
        return self._cursor_page(queryset, cursor)

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"next": self.next_link, "previous": self.previous_link, "results": data})

    # --- page mode ---------------------------------------------------------------------
    def _page(self, queryset: QuerySet[Any], request: Request) -> list[Any]:
        page = _parameter(request, self.page_query_param, _PAGE, 1)
        if page * self.size > MAX_PAGE_ROWS:
            deepest = MAX_PAGE_ROWS // self.size
            raise ValidationError(
                {
                    self.page_query_param: [
                        f"must be at most {deepest} with size {self.size}: page x size is capped at "
                        f"{MAX_PAGE_ROWS:,} rows; read further with `cursor`"
                    ]
                }
            )
        offset = (page - 1) * self.size
        rows = list(queryset[offset : offset + self.size + 1])
        url = request.build_absolute_uri()
        self.next_link = replace_query_param(url, self.page_query_param, page + 1) if len(rows) > self.size else None
        if page == 1:
            self.previous_link = None
        elif page == 2:
            self.previous_link = remove_query_param(url, self.page_query_param)
        else:
            self.previous_link = replace_query_param(url, self.page_query_param, page - 1)
        return rows[: self.size]

    # --- cursor mode -------------------------------------------------------------------
    def _cursor_page(self, queryset: QuerySet[Any], cursor: str) -> list[Any]:
        ordering = tuple(str(term) for term in queryset.query.order_by)
        if not ordering:
            raise ImproperlyConfigured("cursor pagination needs an ordered queryset (StrictOrderingFilter)")
        position = self._decode(cursor, ordering) if cursor else None
        backwards = position is not None and position.backwards
        if position is not None:
            queryset = queryset.filter(_after(position))
        if backwards:
            queryset = queryset.order_by(*(_reversed(term) for term in ordering))
        rows = list(queryset[: self.size + 1])
        more = len(rows) > self.size
        rows = rows[: self.size]
        if backwards:
            rows.reverse()
        # Forwards, rows exist before this page if we came from a cursor; backwards, after it.
        has_next = more if not backwards else True
        has_previous = position is not None if not backwards else more
        self.next_link = self._cursor_link(ordering, rows[-1], backwards=False) if rows and has_next else None
        self.previous_link = self._cursor_link(ordering, rows[0], backwards=True) if rows and has_previous else None
        return rows

    def _cursor_link(self, ordering: tuple[str, ...], row: Model | Mapping[str, Any], *, backwards: bool) -> str:
        # Datetimes in full (DjangoJSONEncoder would cut them to milliseconds and skip rows).
        fields = [term.removeprefix("-") for term in ordering]
        key = (
            [row[field] for field in fields] if isinstance(row, Mapping) else [getattr(row, field) for field in fields]
        )
        token = cursor_token(ordering, key, backwards=backwards)
        url = remove_query_param(self.request.build_absolute_uri(), self.page_query_param)
        return replace_query_param(url, self.cursor_query_param, token)

    def _decode(self, cursor: str, ordering: tuple[str, ...]) -> _Position:
        try:
            made_for, key, backwards = signing.loads(cursor, salt=_CURSOR_SALT)
        except (signing.BadSignature, ValueError, TypeError) as error:
            raise ValidationError(
                {self.cursor_query_param: ["is not a cursor this API gave out; start again with `cursor=`"]}
            ) from error
        if tuple(made_for) != ordering:
            raise ValidationError(
                {
                    self.cursor_query_param: [
                        f"was made for ordering {made_for[0]!r}, not {ordering[0]!r}; keep the ordering while paging"
                    ]
                }
            )
        return _Position(ordering, tuple(key), bool(backwards))

    # --- schema ------------------------------------------------------------------------
    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        link = {"type": "string", "nullable": True, "format": "uri"}
        return {
            "type": "object",
            "required": ["next", "previous", "results"],
            "properties": {
                "next": {**link, "description": "The next page, or null on the last."},
                "previous": {**link, "description": "The page before, or null on the first."},
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": self.page_query_param,
                "required": False,
                "in": "query",
                "description": "Page number, from 1. No total is counted; follow `next` until it is null. "
                f"`page` x `size` is at most {MAX_PAGE_ROWS:,}: read further with `cursor`. Not with `cursor`.",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_ROWS, "default": 1},
            },
            {
                "name": self.size_query_param,
                "required": False,
                "in": "query",
                "description": f"Rows per page, at most {MAX_SIZE}; a larger size is a 400, not cut down.",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_SIZE, "default": DEFAULT_SIZE},
            },
            {
                "name": self.cursor_query_param,
                "required": False,
                "in": "query",
                "description": "Cursor paging for deep reads: send it empty (`cursor=`) for the first page, "
                "then follow `next`. Never counts or skips rows, so every page costs the same.",
                "schema": {"type": "string"},
                "allowEmptyValue": True,
            },
        ]


def cursor_token(ordering: Sequence[str], key: Sequence[Any], *, backwards: bool = False) -> str:
    """The signed cursor for the page after (or before) the row with ordering key `key`.
    (`make bench-api` makes one to start deep in the table.)"""
    values = [_json_value(value) for value in key]
    return signing.dumps([list(ordering), values, backwards], salt=_CURSOR_SALT)


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _reversed(term: str) -> str:
    return term.removeprefix("-") if term.startswith("-") else f"-{term}"


def _after(position: _Position) -> Q:
    """Rows after `position` in its ordering (before it, going backwards).

    For ("-timestamp", "-id") and key (t, i): `timestamp <= t AND (timestamp < t OR id < i)`.
    The first, redundant condition is what lets PostgreSQL start an index scan at t
    instead of filtering from the top of the table.
    """
    descending = position.ordering[0].startswith("-") != position.backwards
    closer, strict = ("lte", "lt") if descending else ("gte", "gt")
    fields = [term.removeprefix("-") for term in position.ordering]
    if len(fields) == 1:
        return Q(**{f"{fields[0]}__{strict}": position.key[0]})
    (field, tiebreak), (value, tiebreak_value) = fields, position.key
    return Q(**{f"{field}__{closer}": value}) & (
        Q(**{f"{field}__{strict}": value}) | Q(**{f"{tiebreak}__{strict}": tiebreak_value})
    )
