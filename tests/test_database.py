"""How the project's connections to PostgreSQL read values (eventpipeline/database.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.db import connection
from django.db.backends.postgresql.psycopg_any import BaseTzLoader
from psycopg.pq import Format

from eventpipeline.database import TimestamptzLoader

pytestmark = pytest.mark.django_db


def read_back(sql: str, *params: datetime) -> datetime:
    with connection.cursor() as cursor:
        cursor.execute(sql, list(params))
        value: datetime = cursor.fetchone()[0]
    return value


def test_every_connection_reads_timestamps_with_the_compiled_loader() -> None:
    connection.ensure_connection()
    loader = connection.connection.adapters.get_loader(1184, Format.TEXT)  # timestamptz
    assert loader is TimestamptzLoader


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 11, 29, 22, 44, 20, 123456, tzinfo=UTC),
        datetime(2026, 11, 29, 22, 44, 20, tzinfo=UTC),  # no microseconds
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ],
)
def test_timestamps_read_back_as_djangos_own_loader_reads_them(moment: datetime) -> None:
    ours = read_back("SELECT %s::timestamptz", moment)
    with connection.cursor() as cursor:
        # Django's loader, for this cursor only: the reference.
        class DjangoLoader(BaseTzLoader):
            timezone = UTC

        cursor.cursor.adapters.register_loader("timestamptz", DjangoLoader)
        cursor.execute("SELECT %s::timestamptz", [moment])
        djangos = cursor.fetchone()[0]
    assert ours == djangos == moment
    assert ours.tzinfo is djangos.tzinfo is UTC
    assert ours.isoformat() == djangos.isoformat()


def test_a_session_in_another_time_zone_still_gives_utc() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'Asia/Kolkata'")
        try:
            value = read_back("SELECT '2026-11-29 22:44:20.5+00'::timestamptz")
        finally:
            cursor.execute("SET TIME ZONE 'UTC'")
    assert value == datetime(2026, 11, 29, 22, 44, 20, 500000, tzinfo=UTC)
    assert value.tzinfo is UTC
