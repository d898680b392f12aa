"""Partitions of `signals` and retention (docs/design.md, "Partitions" and "Retention"),
against real PostgreSQL."""

from __future__ import annotations

import io
import time
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from anomalies_app.models import Anomaly
from emitter.models import InjectedScenario, InjectionRun
from eventpipeline import retention
from eventpipeline.retention import retention_apply
from eventpipeline.tasks import cleanup_old_data, signals_partitions_ahead
from signals_app import partitions
from signals_app.models import DeadLetter, Signal
from signals_app.partitions import DAY_MS, day_number, partition_name, signals_partitions, today_utc
from signals_app.services import signals_store_batch
from tests.factories import anomaly_create, signal_create, signal_row

NOW_MS = int(time.time() * 1000)
TOPIC = "retention-test"
# As every test that leaves a transaction: the tests after it find the database as
# migrations left it. Retention runs outside a transaction, as beat and the command do.
transactional = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def partition_days() -> set[int]:
    return {day_number(partition.start_ms) for partition in signals_partitions()}


def cleanup(*args: str) -> str:
    out = io.StringIO()
    call_command("cleanup", *args, stdout=out)
    return out.getvalue()


def old_data() -> dict[str, Any]:
    """A little of everything, some of it past 30 days (and no old day left by other tests)."""
    retention_apply(days={"signals": 30}, include_open=False, chunk_rows=100)
    for age_days in (40, 40, 35, 31, 29, 0):
        signal_create(timestamp=NOW_MS - age_days * DAY_MS)
    old = timezone.now() - timedelta(days=31)
    anomaly_create(status="resolved", detection_timestamp=old)
    anomaly_create(status="false_positive", detection_timestamp=old)
    anomaly_create(status="new", detection_timestamp=old)
    anomaly_create(status="acknowledged", detection_timestamp=old)
    anomaly_create(status="new", suppressed=True, detection_timestamp=old)
    anomaly_create(status="resolved")
    for offset, age in enumerate((31, 1)):
        DeadLetter.objects.create(
            raw=b"x", source_topic="t", source_partition=0, source_offset=offset, reason="r",
            received_at=timezone.now() - timedelta(days=age),
        )  # fmt: skip
    run = InjectionRun.objects.create(first_user_id=1, last_user_id=2, created_at=old)
    InjectedScenario.objects.create(
        run=run, kind="k", user_id=1, first_event_ms=0, last_event_ms=1, events=1
    )  # fmt: skip
    InjectionRun.objects.create(first_user_id=3, last_user_id=4)
    return {"days_gone": {day_number(NOW_MS - age * DAY_MS) for age in (40, 35, 31)}}


@transactional
def test_a_dry_run_says_what_would_go_per_table_and_removes_nothing() -> None:
    old_data()
    out = cleanup("--dry-run")
    assert "Dry run: nothing is removed." in out
    assert "would remove 3 daily partitions" in out and ", 4 rows" in out
    assert "anomalies: keeps 30 days" in out and "would remove 3 rows" in out
    assert "dead_letters: keeps 30 days" in out and "injection_runs: keeps 30 days" in out
    assert "kept 2 anomalies past retention that are still open" in out
    counts = (Signal.objects.count(), Anomaly.objects.count(), DeadLetter.objects.count(), InjectionRun.objects.count())
    assert counts == (6, 6, 2, 2)


@transactional
def test_cleanup_drops_whole_days_deletes_the_rest_and_keeps_open_anomalies() -> None:
    gone = old_data()["days_gone"]
    out = cleanup()
    assert "signals: removed 4 rows in dropped partitions" in out
    assert "anomalies: removed 3 rows" in out
    assert "dead_letters: removed 1 rows" in out and "injection_runs: removed 1 rows" in out
    assert "kept 2 anomalies past retention" in out
    # The day 29 days back holds rows; what is left of signals are whole days.
    assert sorted(Signal.objects.values_list("timestamp", flat=True)) == [NOW_MS - 29 * DAY_MS, NOW_MS]
    assert not gone & partition_days()
    assert sorted(Anomaly.objects.values_list("status", flat=True)) == ["acknowledged", "new", "resolved"]
    assert (DeadLetter.objects.count(), InjectionRun.objects.count(), InjectedScenario.objects.count()) == (1, 1, 0)
    # Nothing more to do; open anomalies go when asked.
    assert "anomalies: removed 2 rows" in cleanup("--include-open")
    assert cleanup().count("removed 0 rows") == 4


@transactional
def test_the_beat_task_is_the_same_retention_with_each_table_s_days() -> None:
    old_data()
    assert cleanup_old_data.apply().get() == {
        "signals": 4, "anomalies": 3, "dead_letters": 1, "injection_runs": 1, "anomalies_kept": 2,
    }  # fmt: skip
    assert cleanup_old_data.apply(kwargs={"days": 60}).get()["signals"] == 0


@pytest.mark.django_db
def test_days_are_per_table_or_for_all() -> None:
    old_data()
    out = cleanup("--dry-run", "--days", "100", "--days", "signals=32")
    assert "signals: keeps 32 days" in out and "would remove 2 daily partitions" in out
    assert "anomalies: keeps 100 days" in out and "would remove 0 rows" in out
    assert "dead_letters: keeps 1 day (" in cleanup("--dry-run", "--days", "dead_letters=1")
    for bad, reason in (("0", "at least 1 day"), ("week", "not a whole number"), ("signal=3", "unknown table")):
        with pytest.raises(CommandError, match=reason):
            cleanup("--days", bad)


@transactional
def test_an_event_for_a_day_without_partition_gets_one_even_after_retention_dropped_it() -> None:
    """The store task makes the partition an event needs; a worker that knew a day's
    partition before retention dropped it makes it again."""
    late = NOW_MS - 45 * DAY_MS
    assert day_number(late) not in partition_days()
    assert signals_store_batch(topic=TOPIC, rows=[signal_row(offset=0, timestamp=late)]).stored == 1
    assert day_number(late) in partition_days()
    cleanup("--days", "signals=30")
    assert day_number(late) not in partition_days()
    partitions._known_days.add(day_number(late))  # as another worker, which knew it, still believes
    assert signals_store_batch(topic=TOPIC, rows=[signal_row(offset=1, timestamp=late)]).stored == 1
    assert Signal.objects.filter(timestamp=late).count() == 1


@pytest.mark.django_db
def test_an_event_no_partition_can_hold_becomes_a_dead_letter_with_postgresql_s_reason() -> None:
    """A time past any calendar (validation stops these before; this is the last guard)."""
    rows = [signal_row(offset=0), signal_row(offset=1, timestamp=2**62)]
    result = signals_store_batch(topic=TOPIC, rows=rows)
    assert (result.stored, result.dead_letters) == (1, 1)
    assert "no partition of relation" in DeadLetter.objects.get().reason


@pytest.mark.django_db
def test_an_event_is_its_id_and_time_across_partitions() -> None:
    """(event_id, timestamp) is unique: the same event delivered again is skipped, on any
    day; an id sent again with another time is another event."""
    event_id = str(uuid.uuid4())
    yesterday, today = NOW_MS - DAY_MS, NOW_MS
    first = signals_store_batch(topic=TOPIC, rows=[signal_row(event_id=event_id, timestamp=yesterday)])
    again = signals_store_batch(
        topic=TOPIC,
        rows=[signal_row(event_id=event_id, timestamp=yesterday), signal_row(event_id=event_id, timestamp=today)],
    )
    assert (first.stored, again.stored, again.duplicates) == (1, 1, 1)
    assert Signal.objects.filter(event_id=event_id).count() == 2


@transactional
def test_beat_keeps_partitions_ready_ahead() -> None:
    today = day_number(NOW_MS)
    partitions.signals_partitions_forget()  # as a fresh beat-run worker
    with connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE signals DETACH PARTITION "{partition_name(today + 2)}"')
        cursor.execute(f'DROP TABLE "{partition_name(today + 2)}"')
    assert today + 2 not in partition_days()
    made = signals_partitions_ahead.apply().get()
    assert partition_name(today + 2) in made
    assert set(range(today - 1, today + 4)) <= partition_days()
    assert signals_partitions_ahead.apply().get() == []
    assert (today_utc() - timedelta(days=1)).strftime("signals_p%Y%m%d") in {p.name for p in signals_partitions()}


@transactional
def test_one_retention_run_at_a_time() -> None:
    """Beat's hourly run and a `cleanup` in a terminal would race for the same rows."""
    old_data()
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"]
    ) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [retention._RETENTION_LOCK])
        with pytest.raises(CommandError, match="another retention run is going on"):
            cleanup()
        assert cleanup_old_data.apply().get() == {}
    assert Signal.objects.count() == 6, "nothing was removed meanwhile"
    assert "signals: removed 4 rows" in cleanup()


@transactional
def test_a_failed_retention_run_lets_go_of_its_lock() -> None:
    """The lock is a transaction's, held on a connection of its own (it must not depend on
    one session: docs/scaling.md, "PgBouncer in transaction mode"); a run that fails ends
    that transaction, and the next run goes ahead."""
    held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s"
    with pytest.raises(RuntimeError), retention._one_run_at_a_time():
        with connection.cursor() as cursor:
            cursor.execute(held, [retention._RETENTION_LOCK & 0xFFFF_FFFF])
            assert cursor.fetchone()[0] == 1, "the run holds the lock"
        raise RuntimeError("a run that fails")
    with connection.cursor() as cursor:
        cursor.execute(held, [retention._RETENTION_LOCK & 0xFFFF_FFFF])
        assert cursor.fetchone()[0] == 0
    assert retention_apply(days={"signals": 30}, include_open=False, chunk_rows=100)[0].table == "signals"
