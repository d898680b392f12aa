"""`signals` is partitioned by event time, one UTC day per partition (docs/design.md,
"Partitions").

A day's partition is a table of its own, `signals_pYYYYMMDD`, holding the events whose
`timestamp` (ms) falls in that day. Beat creates them a few days ahead; the store path
creates one on the spot when an event lands where none exists yet (a late or replayed
event). Retention drops a whole day at once, which costs a catalog change instead of
hours of `DELETE`, bloat and vacuum.

A partition is created as a plain table and then attached: `ATTACH PARTITION` takes a
lock on `signals` that lets inserts go on, where `CREATE TABLE ... PARTITION OF` would
stop them. A partition is dropped after `DETACH PARTITION ... CONCURRENTLY`, for the same
reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction

DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)
_FIRST_DAY, _LAST_DAY = (date.min - _EPOCH).days, (date.max - _EPOCH).days
# Only one session at a time adds partitions: two workers meeting the same new day would
# otherwise both try to create it.
_PARTITION_LOCK = 0x5167_6E61_6C50  # arbitrary, fixed: "SignalP"
_NAME = re.compile(r"signals_p(\d{8})")
_BOUNDS = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")

# Days this process knows a partition for. Filled only after the creating transaction
# commits, so a rolled-back creation is never believed; emptied when PostgreSQL says a
# partition is missing after all (retention dropped it since).
_known_days: set[int] = set()


@dataclass(frozen=True)
class Partition:
    name: str
    start_ms: int
    end_ms: int
    # PostgreSQL's own estimate (pg_class.reltuples, kept by autovacuum and ANALYZE), or an
    # exact count where it has none yet: counting a day of billions of rows is not worth it.
    rows: int
    estimated: bool = False
    detach_pending: bool = False

    @property
    def day(self) -> date:
        return day_of(self.start_ms)


def day_number(timestamp_ms: int) -> int:
    """The UTC day an event time falls in, as days since the epoch."""
    return timestamp_ms // DAY_MS


def day_of(timestamp_ms: int) -> date:
    return _EPOCH + timedelta(days=day_number(timestamp_ms))


def partition_name(day: int) -> str:
    return f"signals_p{_EPOCH + timedelta(days=day):%Y%m%d}"


def days_ahead(*, today: date, before: int = 1, ahead: int) -> list[int]:
    """The days beat keeps a partition for: from `before` days ago to `ahead` days on."""
    first = (today - _EPOCH).days - before
    return list(range(first, first + before + ahead + 1))


def today_utc() -> date:
    return datetime.now(UTC).date()


def signals_partitions(*, ending_by_ms: int | None = None) -> list[Partition]:
    """The partitions of `signals`, oldest first: every one, or with their rows those whose
    days end by `ending_by_ms` (counting the rows of one PostgreSQL has no statistics of)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples::bigint, i.inhdetachpending
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'signals'::regclass
            """
        )
        found = cursor.fetchall()
        partitions = []
        for name, bound, estimate, pending in found:
            match = _BOUNDS.search(bound)
            if match is None:  # not a range partition of ours (a DEFAULT added by hand)
                continue
            if ending_by_ms is not None and int(match[2]) > ending_by_ms:
                continue
            rows, estimated = estimate, True
            if rows < 0 and ending_by_ms is not None:  # never analysed yet
                cursor.execute(f'SELECT count(*) FROM "{name}"')
                rows, estimated = cursor.fetchone()[0], False
            partitions.append(Partition(name, int(match[1]), int(match[2]), rows, estimated, pending))
    return sorted(partitions, key=lambda partition: partition.start_ms)


def _days_named() -> set[int]:
    """The days of the partitions of `signals`, read from their names alone: reading their
    bounds (pg_get_expr) would lock each partition, and wait behind whatever locks them."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = 'signals'::regclass
            """
        )
        names = [name for (name,) in cursor.fetchall()]
    days = set()
    for name in names:
        if (match := _NAME.fullmatch(name)) is not None:
            days.add((datetime.strptime(match[1], "%Y%m%d").date() - _EPOCH).days)
    return days


def signals_partitions_ensure(*, days: Iterable[int]) -> list[str]:
    """Make sure every one of these days (days since the epoch) has its partition; return
    the names of those created."""
    # A day no calendar date names is left to PostgreSQL to refuse, with its reason.
    wanted = {day for day in days if _FIRST_DAY <= day <= _LAST_DAY} - _known_days
    if not wanted:
        return []
    created = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_PARTITION_LOCK])
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [str(settings.PARTITION_LOCK_TIMEOUT_MS)])
        covered = _days_named() & wanted
        for day in sorted(wanted - covered):
            name = partition_name(day)
            cursor.execute(f'CREATE TABLE "{name}" (LIKE signals INCLUDING DEFAULTS)')
            cursor.execute(
                f'ALTER TABLE signals ATTACH PARTITION "{name}" FOR VALUES FROM (%s) TO (%s)',
                [day * DAY_MS, (day + 1) * DAY_MS],
            )
            created.append(name)
        transaction.on_commit(lambda: _known_days.update(wanted))
    return created


def signals_partitions_forget() -> None:
    """Believe nothing about existing partitions: the next store asks PostgreSQL again."""
    _known_days.clear()


def signals_partition_drop(*, partition: Partition) -> bool:
    """Remove a whole day of signals; False if it was gone already (dropped meanwhile).

    Outside a transaction the partition is first detached CONCURRENTLY, so inserts into
    other days go on meanwhile; one left half-detached by an interruption is finished.
    Behind a pooler in transaction mode (DATABASE_TRANSACTION_POOLING) the day is detached
    in one transaction instead: CONCURRENTLY runs outside any, under a session's
    lock_timeout, and such a pooler keeps no session for a client between statements. That
    holds `signals` to itself for the moment of the catalog change, after waiting at most
    PARTITION_LOCK_TIMEOUT_MS for it (docs/scaling.md, "PgBouncer in transaction mode").
    """
    if settings.DATABASE_TRANSACTION_POOLING and not connection.in_atomic_block:
        with transaction.atomic():
            return signals_partition_drop(partition=partition)
    in_transaction = connection.in_atomic_block
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [f'"{partition.name}"'])
        if not cursor.fetchone()[0]:
            return False
        # For the transaction, or, outside one, for the session until the end.
        timeout = str(settings.PARTITION_LOCK_TIMEOUT_MS)
        cursor.execute("SELECT set_config('lock_timeout', %s, %s)", [timeout, in_transaction])
        try:
            if partition.detach_pending:
                cursor.execute(f'ALTER TABLE signals DETACH PARTITION "{partition.name}" FINALIZE')
            else:
                mode = "" if in_transaction else " CONCURRENTLY"
                cursor.execute(f'ALTER TABLE signals DETACH PARTITION "{partition.name}"{mode}')
            cursor.execute(f'DROP TABLE "{partition.name}"')
        finally:
            if not in_transaction:
                cursor.execute("SELECT set_config('lock_timeout', '0', false)")
    _known_days.difference_update(range(*_day_range(partition)))
    return True


def _day_range(partition: Partition) -> tuple[int, int]:
    """The days a partition covers, as a range's (start, stop)."""
    return day_number(partition.start_ms), -(-partition.end_ms // DAY_MS)
