"""How every connection to PostgreSQL reads timestamps, and how long the api's statements may run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
from django.conf import settings
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg.adapt import Loader
from psycopg.pq import Format

# psycopg's own loader: compiled (psycopg-binary) where installed, else pure Python.
_PSYCOPG_TIMESTAMPTZ_LOADER: type[Loader] = psycopg.adapters.get_loader(  # type: ignore[assignment]
    psycopg.adapters.types["timestamptz"].oid, Format.TEXT
)


class TimestamptzLoader(Loader):
    """A timestamptz as Django's own loader gives it (a datetime in UTC), parsed by
    psycopg's compiled loader.

    Django registers a pure-Python subclass of psycopg's loader on every connection, so
    that each datetime carries the connection's time zone object; that bypasses
    psycopg-binary's parser, on timestamps that every row of every list page carries
    (docs/performance.md, "Timestamp parsing"). The loader is installed only where
    Django's time zone for the connection is UTC, which Django also sets as the session's,
    so psycopg's loader already gives datetimes in UTC; only their tzinfo object is made
    Django's. (Should a session be set to another time zone, the moment is still right:
    converted, where Django's loader would relabel the local time as UTC.) `timezone` is
    what Django compares with its own before it would register its loader again for a
    cursor."""

    timezone = UTC

    def __init__(self, oid: int, context: Any = None) -> None:
        super().__init__(oid, context)
        self._load = _PSYCOPG_TIMESTAMPTZ_LOADER(oid, context).load

    def load(self, data: Any) -> datetime:
        value: datetime = self._load(data)
        return value if value.tzinfo is UTC else value.astimezone(UTC)


def timestamptz_loader_install(*, connection: BaseDatabaseWrapper, **_: Any) -> None:
    """On each new connection (Django's connection_created signal), when its time zone is UTC."""
    if connection.vendor == "postgresql" and connection.timezone is UTC:
        connection.connection.adapters.register_loader("timestamptz", TimestamptzLoader)


def api_statement_timeout_set(*, connection: BaseDatabaseWrapper, **_: Any) -> None:
    """On each new connection of the api (Django's connection_created signal, connected by
    eventpipeline/wsgi.py, which only the api's gunicorn loads): no statement runs longer
    than API_STATEMENT_TIMEOUT_MS. Set for the session, once per connection, which the api
    keeps for many requests (CONN_MAX_AGE)."""
    if connection.vendor == "postgresql" and settings.API_STATEMENT_TIMEOUT_MS:
        timeout = str(settings.API_STATEMENT_TIMEOUT_MS)
        connection.connection.execute("SELECT set_config('statement_timeout', %s, false)", [timeout])
