"""The per-user lock that detection and triage take before they touch a user's anomalies."""

from __future__ import annotations

from django.db import connection


def users_lock(user_ids: list[int]) -> None:
    """Transaction-scoped advisory locks, one per user, taken in one order by everyone."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_advisory_xact_lock(hashtextextended('eventpipeline.detect.user:' || u, 0))) "
            "FROM (SELECT u FROM unnest(%s::bigint[]) AS u ORDER BY u) AS users",
            [user_ids],
        )
