"""Token authentication for the query API."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, connection
from django.db.models import Model
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token


@dataclass(frozen=True)
class _TokenUserQuery:
    sql: str
    token_fields: list[str]  # the attnames of the row's first columns, then
    user_fields: list[str]  # those of the rest


@functools.cache
def _token_user_query() -> _TokenUserQuery:
    """One statement, fixed at start from the two models: every column of the token, then
    every column of its user, for the key given as its only parameter."""
    user_model = get_user_model()

    def quote(name: str | None) -> str:
        assert name is not None  # concrete fields have columns
        return connection.ops.quote_name(name)

    token_columns = [f"t.{quote(field.column)}" for field in Token._meta.concrete_fields]
    user_columns = [f"u.{quote(field.column)}" for field in user_model._meta.concrete_fields]
    user_key = Token._meta.get_field("user").column
    sql = (
        f"SELECT {', '.join(token_columns + user_columns)} "
        f"FROM {quote(Token._meta.db_table)} t "
        f"JOIN {quote(user_model._meta.db_table)} u ON u.{quote(user_model._meta.pk.column)} = t.{quote(user_key)} "
        f"WHERE t.{quote(Token._meta.pk.column)} = %s"
    )
    return _TokenUserQuery(
        sql,
        [field.attname for field in Token._meta.concrete_fields],
        [field.attname for field in user_model._meta.concrete_fields],
    )


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's token authentication, with the token and its user read by one fixed statement
    made once per process: the ORM's `select_related` query is built anew, and makes both
    models through generic machinery, on every request
    (docs/performance.md, "Token authentication"). The answers are the same: 401 "Invalid
    token." or "User inactive or deleted.", else (user, token), both read from the database
    on each request, so a deleted token or an inactive user is refused at once."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        query = _token_user_query()
        with connection.cursor() as cursor:
            cursor.execute(query.sql, [key])
            row = cursor.fetchone()
        if row is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        split = len(query.token_fields)
        user = _from_row(get_user_model(), query.user_fields, row[split:])
        token = _from_row(Token, query.token_fields, row[:split])
        token.user = user
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return user, token


def _from_row(model: type[Model], field_names: list[str], values: tuple[Any, ...]) -> Any:
    # Model.from_db is how the ORM itself makes an instance of a row read from the database.
    return model.from_db(DEFAULT_DB_ALIAS, field_names, values)
