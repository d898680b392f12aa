"""Retention: what `manage.py cleanup` and beat's hourly task remove (docs/design.md,
"Retention").

Four tables grow without end: signals, anomalies, dead letters and the ground truth of
injection runs. Each keeps its own number of days (settings RETENTION_DAYS_BY_TABLE).
Signals go a whole day's partition at a time; the others go in chunks of
RETENTION_CHUNK_ROWS rows, each chunk its own short transaction, so retention never holds
a long one, and an interrupted run has done what it did and is simply run again.

Anomalies still waiting for an analyst are kept past retention unless `include_open`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from django.db import connection, models, transaction

from anomalies_app.selectors import anomaly_expired_list
from emitter.models import InjectionRun
from signals_app.models import DeadLetter
from signals_app.partitions import Partition, signals_partition_drop, signals_partitions

TABLES = ("signals", "anomalies", "dead_letters", "injection_runs")
# One retention run at a time, beat's or a terminal's: two would race for the same rows
# and partitions.
_RETENTION_LOCK = 0x5265_7465_6E74  # arbitrary, fixed: "Retent"


class RetentionBusy(Exception):
    """Another retention run holds the lock."""


class ProgressBar(Protocol):
    def update(self, n: int) -> object: ...
    def close(self) -> None: ...


class NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


# Told a table and how many rows its part will remove; returns what to tell each step done.
Progress = Callable[[str, int], ProgressBar]


@dataclass(frozen=True)
class TablePlan:
    """What retention would remove from one table now."""

    table: str
    days: int
    before: datetime
    rows: int
    # Past retention, but kept (anomalies still open).
    kept: int = 0
    # `rows` is PostgreSQL's estimate (a partition's statistics), not a count.
    estimated: bool = False
    partitions: tuple[Partition, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class TableDone:
    table: str
    removed: int
    kept: int
    estimated: bool
    seconds: float


def _no_progress(table: str, total: int) -> ProgressBar:
    return NoProgress()


@contextmanager
def _one_run_at_a_time() -> Iterator[None]:
    """Hold the retention lock for the whole run: a transaction's advisory lock, taken on a
    connection of its own whose one transaction stays open until the run ends.

    The run's own steps each commit, so the lock cannot be one of theirs; and a session's
    lock is not safe behind a pooler in transaction mode, which lends the session holding it
    to other clients between transactions (and may run the unlock on another one), where an
    open transaction keeps its session to itself (docs/scaling.md, "PgBouncer in transaction
    mode"). The transaction only waits: it reads no table and writes nothing, so it holds
    back neither vacuum nor DETACH PARTITION ... CONCURRENTLY.
    """
    with closing(connection.get_new_connection(connection.get_connection_params())) as holder:
        try:
            if not holder.execute("SELECT pg_try_advisory_xact_lock(%s)", [_RETENTION_LOCK]).fetchone()[0]:
                raise RetentionBusy("another retention run is going on (beat's, or `manage.py cleanup` elsewhere)")
            yield
        finally:
            holder.rollback()  # ends the transaction, and with it the lock


def _expiring(table: str, before: datetime, include_open: bool) -> tuple[models.QuerySet, models.QuerySet]:  # type: ignore[type-arg]
    """The rows of a chunked table that go, and those past retention that stay."""
    if table == "anomalies":
        return anomaly_expired_list(before=before, include_open=include_open)
    if table == "dead_letters":
        going: models.QuerySet = DeadLetter.objects.filter(received_at__lt=before)  # type: ignore[type-arg]
    elif table == "injection_runs":
        going = InjectionRun.objects.filter(created_at__lt=before)
    else:
        raise ValueError(f"unknown table {table!r}: one of {', '.join(TABLES)}")
    return going, going.none()


def retention_plan(*, days: Mapping[str, int], include_open: bool, now: datetime | None = None) -> list[TablePlan]:
    """What each table in `days` would lose now, without changing anything."""
    now = now or datetime.now(UTC)
    plan = []
    for table in TABLES:
        if table not in days:
            continue
        before = now - timedelta(days=days[table])
        if table == "signals":
            # The partitions whose whole day is older than `before`.
            partitions = signals_partitions(ending_by_ms=int(before.timestamp() * 1000))
            plan.append(
                TablePlan(
                    table,
                    days[table],
                    before,
                    rows=sum(partition.rows for partition in partitions),
                    estimated=any(partition.estimated for partition in partitions),
                    partitions=tuple(partitions),
                )
            )
        else:
            going, kept = _expiring(table, before, include_open)
            plan.append(TablePlan(table, days[table], before, rows=going.count(), kept=kept.count()))
    return plan


def retention_apply(
    *, days: Mapping[str, int], include_open: bool, chunk_rows: int, progress: Progress = _no_progress
) -> list[TableDone]:
    """Remove what retention says, table by table, each step in a transaction of its own.
    Raises RetentionBusy if another run is going on."""
    done = []
    with _one_run_at_a_time():
        for part in retention_plan(days=days, include_open=include_open):
            started = datetime.now(UTC)
            bar = progress(part.table, part.rows)
            try:
                if part.table == "signals":
                    removed = 0
                    for partition in part.partitions:
                        if signals_partition_drop(partition=partition):
                            removed += partition.rows
                        bar.update(partition.rows)
                else:
                    removed = _delete_in_chunks(part, include_open=include_open, chunk_rows=chunk_rows, bar=bar)
            finally:
                bar.close()
            seconds = (datetime.now(UTC) - started).total_seconds()
            done.append(TableDone(part.table, removed, part.kept, part.estimated, seconds))
    return done


def _delete_in_chunks(part: TablePlan, *, include_open: bool, chunk_rows: int, bar: ProgressBar) -> int:
    removed = 0
    while True:
        with transaction.atomic():
            going, _ = _expiring(part.table, part.before, include_open)
            ids = list(going.values_list("pk", flat=True)[:chunk_rows])
            if not ids:
                return removed
            _, by_model = going.model.objects.filter(pk__in=ids).delete()
        count = by_model.get(going.model._meta.label, 0)
        removed += count
        bar.update(count)
